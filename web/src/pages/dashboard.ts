// #/: guests by state, node health and capacity, running and recent operations, and
// metric charts when metrics exist (S23).
import type { Node } from "../../../sdk/typescript/src/index";
import { api, failure, onLeave, onPage } from "../app";
import { charts, rangeSelect } from "../charts";
import { fmtTime, h, replace, table } from "../dom";
import { opProgress, TERMINAL } from "../progress";
import { capacity } from "./nodes";

export async function renderDashboard(root: HTMLElement): Promise<void> {
  const counts = h("div", { class: "grid", id: "guest-counts" });
  const nodesBody = h("tbody");
  const runningBox = h("div", { id: "running-operations" });
  const recentBody = h("tbody");
  const nodeSel = h("select", { id: "metrics-node" });
  const range = rangeSelect("metrics-range");
  const metricsBox = h("div", { id: "dashboard-metrics" });
  const metricsSection = h(
    "div",
    { id: "dashboard-metrics-section", hidden: true },
    h("h2", null, "Metrics"),
    h("div", { class: "toolbar" }, h("label", { for: "metrics-node" }, "Node"), nodeSel, h("label", { for: "metrics-range" }, "Range"), range),
    metricsBox,
  );
  replace(
    root,
    h(
      "section",
      { id: "dashboard" },
      h("h1", null, "Dashboard"),
      h("h2", null, "Guests"),
      counts,
      h("h2", null, "Nodes"),
      table("dashboard-nodes", ["Node", "State", "Guests", "Capacity", "Load"], nodesBody),
      h("h2", null, "Running operations"),
      runningBox,
      h("h2", null, "Recent operations"),
      table("recent-operations", ["Kind", "State", "Guest", "By", "When"], recentBody),
      metricsSection,
    ),
  );

  const loadGuests = async () => {
    try {
      const guests = await api().guests.guestList({ limit: 1000 });
      const by = new Map<string, number>();
      for (const g of guests) by.set(g.state, (by.get(g.state) ?? 0) + 1);
      replace(
        counts,
        h("a", { href: "#/guests", class: "card", dataset: { state: "all" } }, h("div", { class: "stat" }, String(guests.length)), "guests"),
        [...by.entries()]
          .sort()
          .map(([s, n]) => h("a", { href: `#/guests?state=${encodeURIComponent(s)}`, class: "card", dataset: { state: s } }, h("div", { class: "stat" }, String(n)), s)),
      );
    } catch (e) {
      replace(counts, h("p", { class: "bad" }, (await failure(e)).message));
    }
  };
  let nodes: Node[] = [];
  const loadNodes = async () => {
    try {
      nodes = await api().nodes.nodeList();
      replace(
        nodesBody,
        nodes.length
          ? nodes.map((n) =>
              h(
                "tr",
                { dataset: { nodeId: n.id } },
                h("td", null, h("a", { href: `#/nodes/${encodeURIComponent(n.id)}` }, n.hostname || n.id)),
                h("td", { class: "node-state" }, n.online ? "online" : "offline"),
                h("td", null, String(n.guests)),
                h("td", null, capacity(n)),
                h("td", null, n.load1.toFixed(2)),
              ),
            )
          : h("tr", null, h("td", { colspan: 5 }, "No nodes.")),
      );
    } catch (e) {
      replace(nodesBody, h("tr", null, h("td", { colspan: 5 }, (await failure(e)).message)));
    }
  };
  const shownRunning = new Set<string>();
  const loadOps = async () => {
    try {
      const [active, recent] = await Promise.all([api().ops.operationList({ active: true, limit: 50 }), api().ops.operationList({ limit: 15 })]);
      for (const o of active) {
        if (shownRunning.has(o.id)) continue;
        shownRunning.add(o.id);
        runningBox.append(opProgress(o.id, `${o.kind}${o.guestId ? ` ${o.guestId}` : ""}`).el);
      }
      if (!runningBox.childNodes.length) runningBox.append(h("p", { class: "muted none" }, "None."));
      else runningBox.querySelector(".none")?.remove();
      replace(
        recentBody,
        recent.map((o) =>
          h(
            "tr",
            { dataset: { opId: o.id } },
            h("td", null, o.kind),
            h("td", null, o.state, TERMINAL.includes(o.state) ? "" : ` ${o.progress.percent}%`),
            h("td", null, o.guestId ? h("a", { href: `#/guests/${encodeURIComponent(o.guestId)}` }, o.guestId) : ""),
            h("td", null, o.requestedBy),
            h("td", null, fmtTime(o.createdAt)),
          ),
        ),
      );
    } catch (e) {
      replace(runningBox, h("p", { class: "bad" }, (await failure(e)).message));
    }
  };
  const loadMetrics = async () => {
    if (!nodeSel.value) return;
    try {
      const [avg, max] = await Promise.all([
        api().metrics.nodeMetrics({ id: nodeSel.value, from: range.value, agg: "avg" }),
        api().metrics.nodeMetrics({ id: nodeSel.value, from: range.value, agg: "max" }),
      ]);
      const has = avg.series.some((s) => s.atMs.length);
      metricsSection.hidden = !has;
      if (has) replace(metricsBox, charts(avg, max));
    } catch {
      metricsSection.hidden = true;
    }
  };
  nodeSel.addEventListener("change", () => void loadMetrics());
  range.addEventListener("change", () => void loadMetrics());

  let tg: ReturnType<typeof setTimeout> | undefined;
  let to: ReturnType<typeof setTimeout> | undefined;
  let tn: ReturnType<typeof setTimeout> | undefined;
  onLeave(() => [tg, to, tn].forEach((t) => clearTimeout(t)));
  onPage(["guest.state", "operation", "node.state"], (ev) => {
    if (ev.kind === "guest.state") {
      clearTimeout(tg);
      tg = setTimeout(() => void loadGuests(), 500);
    } else if (ev.kind === "operation") {
      const st = (ev.data as { state?: string })?.state ?? "";
      if (st === "pending" || TERMINAL.includes(st)) {
        clearTimeout(to);
        to = setTimeout(() => void loadOps(), 500);
      }
    } else {
      clearTimeout(tn);
      tn = setTimeout(() => void loadNodes(), 500);
    }
  });

  await Promise.all([loadGuests(), loadNodes(), loadOps()]);
  for (const n of nodes) nodeSel.append(h("option", { value: n.id }, n.hostname || n.id));
  await loadMetrics();
}
