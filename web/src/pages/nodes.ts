// #/nodes and #/nodes/<id>: node state, how long offline (S36), workers (S47), capacity,
// foreign domains, the auto-placement switch (S51), drain and remove.
import type { GuestRecords, Node } from "../../../sdk/typescript/src/index";
import { api, attempt, failure, isAdmin, isOperator, onPage, showError } from "../app";
import { charts, rangeSelect } from "../charts";
import { confirmDialog, fmtDuration, fmtMib, fmtTime, h, replace, table } from "../dom";
import { opProgress } from "../progress";

function offlineText(n: Node): string {
  if (n.online) return "online";
  const secs = n.offlineSeconds ?? (n.offlineSince ? (Date.now() - Date.parse(n.offlineSince)) / 1000 : undefined);
  return secs !== undefined ? `offline for ${fmtDuration(secs)}` : "offline";
}

function usage(used: number, total: number, label: string): HTMLElement {
  const pct = total > 0 ? Math.min(100, Math.max(0, (used / total) * 100)) : 0;
  const fill = h("span");
  fill.style.width = `${pct.toFixed(1)}%`;
  return h("div", { class: "usage", title: label }, h("div", null, label), h("div", { class: "bar", role: "img", "aria-label": `${label}: ${pct.toFixed(0)}% used` }, fill));
}

export function capacity(n: Node): HTMLElement[] {
  return [
    usage(n.memoryMib - n.freeMemoryMib, n.memoryMib, `memory ${fmtMib(n.memoryMib - n.freeMemoryMib)} / ${fmtMib(n.memoryMib)} used`),
    usage(n.storageTotalMib - n.storageFreeMib, n.storageTotalMib, `storage ${fmtMib(n.storageTotalMib - n.storageFreeMib)} / ${fmtMib(n.storageTotalMib)} used`),
  ];
}

export async function renderNodes(root: HTMLElement): Promise<void> {
  const body = h("tbody");
  const load = async () => {
    const nodes = await api().nodes.nodeList();
    replace(
      body,
      nodes.length
        ? nodes.map((n) =>
            h(
              "tr",
              { dataset: { nodeId: n.id } },
              h("td", null, h("a", { href: `#/nodes/${encodeURIComponent(n.id)}` }, n.hostname || n.id)),
              h("td", { class: "node-state", dataset: { online: String(n.online) } }, offlineText(n)),
              h("td", null, n.address),
              h("td", null, String(n.guests)),
              h("td", null, `${n.cpus} (load ${n.load1.toFixed(2)})`),
              h("td", null, capacity(n)),
              h("td", { class: "accept-auto" }, n.acceptAuto ? "yes" : "no"),
              h("td", null, n.workers.map((w) => h("span", { class: "tag", title: w.name }, `${w.name}: ${w.state}`))),
              h("td", null, n.version),
            ),
          )
        : h("tr", null, h("td", { colspan: 9 }, "No nodes.")),
    );
  };
  replace(root, h("section", null, h("h1", null, "Nodes"), table("nodes-table", ["Node", "State", "Address", "Guests", "CPUs", "Capacity", "Auto placement", "Workers", "Version"], body)));
  let t: ReturnType<typeof setTimeout> | undefined;
  onPage(["node.state"], () => {
    clearTimeout(t);
    t = setTimeout(() => void attempt(load), 300);
  });
  await load();
}

export async function renderNode(root: HTMLElement, id: string): Promise<void> {
  let n: Node;
  try {
    n = await api().nodes.nodeGet({ id });
  } catch (e) {
    const f = await failure(e);
    if (f.status === 404) {
      replace(root, h("section", { id: "not-found" }, h("h1", null, "Node not found"), h("p", null, "not found")));
      return;
    }
    throw e;
  }
  const section = h("section", { id: "node", dataset: { nodeId: id } });
  const progress = h("div", { id: "node-progress" });
  const range = rangeSelect("metrics-range");
  const metricsBox = h("div", { id: "node-metrics" });
  const loadMetrics = async () => {
    try {
      const [avg, max] = await Promise.all([
        api().metrics.nodeMetrics({ id, from: range.value, agg: "avg" }),
        api().metrics.nodeMetrics({ id, from: range.value, agg: "max" }),
      ]);
      replace(metricsBox, charts(avg, max));
    } catch (e) {
      replace(metricsBox, h("p", { class: "muted" }, `No metrics: ${(await failure(e)).message}`));
    }
  };
  range.addEventListener("change", () => void loadMetrics());

  const draw = () => {
    const auto = h("input", { type: "checkbox", id: "node-accept-auto", checked: n.acceptAuto, disabled: !isOperator() });
    auto.addEventListener("change", async () => {
      try {
        n = await api().nodes.nodeUpdate({ id, nodeSettings: { acceptAuto: auto.checked } });
      } catch (e) {
        auto.checked = !auto.checked;
        await showError(e);
      }
    });
    const drain = h("button", { type: "button", id: "node-drain", class: "secondary" }, "Drain (move its guests away)");
    drain.addEventListener("click", async () => {
      if (!(await confirmDialog(`Move every guest off ${n.hostname}?`, "Drain"))) return;
      const d = await attempt(() => api().nodes.nodeDrain({ id }));
      if (!d) return;
      progress.prepend(
        h(
          "div",
          { class: "card" },
          opProgress(d.operationId, "drain").el,
          d.moves.length ? h("ul", null, d.moves.map((m) => h("li", null, `${m.guest} → ${m.to}`))) : null,
          d.unmovable.length ? h("ul", { class: "bad" }, d.unmovable.map((u) => h("li", null, `${u.guest}: ${u.reason}`))) : null,
        ),
      );
    });
    const records = h("select", { id: "node-remove-guests" }, h("option", { value: "keep" }, "keep its guests' records"), h("option", { value: "delete" }, "delete its guests' records"));
    const remove = h("button", { type: "button", id: "node-remove", class: "danger" }, "Remove node");
    remove.addEventListener("click", async () => {
      if (!(await confirmDialog(`Remove node ${n.hostname} from corral (${records.value} its guests' records)?`, "Remove"))) return;
      const a = await attempt(() => api().nodes.nodeRemove({ id, guests: records.value as GuestRecords }));
      if (a) progress.prepend(opProgress(a.operationId, "remove node", (st) => st === "succeeded" && (location.hash = "#/nodes")).el);
    });
    replace(
      section,
      h("p", null, h("a", { href: "#/nodes" }, "← Nodes")),
      h("h1", null, h("span", { id: "node-name" }, n.hostname || n.id), " ", h("span", { id: "node-state", dataset: { online: String(n.online) } }, offlineText(n))),
      n.offlineSince ? h("p", { id: "node-offline-since" }, `Offline since ${fmtTime(n.offlineSince)} (${fmtDuration(n.offlineSeconds ?? (Date.now() - Date.parse(n.offlineSince)) / 1000)})`) : null,
      h(
        "div",
        { class: "grid" },
        h(
          "div",
          { class: "card" },
          h("h2", null, "Details"),
          h(
            "dl",
            { class: "facts" },
            [
              ["Id", n.id],
              ["Address", n.address],
              ["Version", n.version],
              ["Hypervisor", `${n.hypervisorUri} (${n.domainType})`],
              ["CPU", `${n.cpus} × ${n.cpuModel}${n.cpuVirt ? "" : " (no VT-x/AMD-V)"}`],
              ["Load", n.load1.toFixed(2)],
              ["Guests", String(n.guests)],
              ["Last seen", fmtTime(n.lastSeen)],
              ["Storage dir", n.storageDir],
              ["VM bridge", n.vmNetworkBridge],
              ["Manage bridge", n.vmManageNetworkBridge],
              ["Bridges", n.bridges.join(", ")],
              ["VNC ports", n.vncPortMin ? `${n.vncPortMin}–${n.vncPortMax}` : ""],
              ["Fence", n.fenceCommand?.join(" ") ?? "none"],
            ].map(([k, val]) => [h("dt", null, k), h("dd", null, val)]),
          ),
        ),
        h(
          "div",
          { class: "card" },
          h("h2", null, "Capacity"),
          capacity(n),
          h("p", null, h("label", null, auto, " Accept automatically placed guests")),
          n.held ? h("p", { class: "muted" }, "The node claims more than accepted; see the API (node_accept_capacity).") : null,
          isOperator() ? h("div", { class: "buttons" }, drain) : null,
          isAdmin() ? h("div", { class: "buttons" }, records, remove) : null,
          progress,
        ),
      ),
      h("h2", null, "Workers"),
      table("node-workers", ["Worker", "State"], h("tbody", null, n.workers.map((w) => h("tr", { dataset: { worker: w.name } }, h("td", null, w.name), h("td", { class: "worker-state" }, w.state))))),
      h("h2", null, "Foreign domains (not managed by corral)"),
      table(
        "node-foreign",
        ["Name", "State", "UUID"],
        h("tbody", null, n.foreignDomains.length ? n.foreignDomains.map((d) => h("tr", null, h("td", null, d.name), h("td", null, d.state), h("td", null, d.uuid))) : h("tr", null, h("td", { colspan: 3 }, "None."))),
      ),
      n.cleanup.length ? [h("h2", null, "Cleanup pending"), h("pre", null, JSON.stringify(n.cleanup, null, 2))] : null,
      h("h2", null, "Metrics"),
      h("div", { class: "toolbar" }, h("label", { for: "metrics-range" }, "Range"), range),
      metricsBox,
    );
  };
  draw();
  replace(root, section);
  onPage(["node.state"], async (ev) => {
    if (ev.subject !== id) return;
    try {
      n = await api().nodes.nodeGet({ id });
      const keep = [...progress.childNodes];
      draw();
      progress.append(...keep);
    } catch {
      /* next event */
    }
  });
  await loadMetrics();
}
