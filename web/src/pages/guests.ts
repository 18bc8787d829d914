// #/guests: the guest list (one guestList round trip per load), filters, bulk actions
// with a per-row result, and live state from `guest.state` events (S64).
import { GuestState, type Guest, type GuestAction, type Node } from "../../../sdk/typescript/src/index";
import { api, failure, isAdmin, onLeave, onPage, showError } from "../app";
import { confirmDialog, h, replace, table } from "../dom";
import { opProgress } from "../progress";

/** User names by id, for administrators (who may list users); others see their own
 * guests only, and owners are shown as ids if at all. */
export async function userNames(): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  if (!isAdmin()) return m;
  try {
    for (const u of await api().users.userList()) m.set(u.id, u.name);
  } catch {
    /* ids are shown instead */
  }
  return m;
}

export async function nodeNames(): Promise<Map<string, Node>> {
  const m = new Map<string, Node>();
  try {
    for (const n of await api().nodes.nodeList()) m.set(n.id, n);
  } catch {
    /* users may not list nodes: ids are shown instead */
  }
  return m;
}

export async function renderGuests(root: HTMLElement): Promise<void> {
  const q = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const fState = h(
    "select",
    { id: "filter-state" },
    h("option", { value: "" }, "any state"),
    Object.values(GuestState).map((s) => h("option", { value: s }, s)),
  );
  fState.value = q.get("state") ?? "";
  const fNode = h("select", { id: "filter-node" }, h("option", { value: "" }, "any node"));
  const fTag = h("input", { id: "filter-tag", type: "text", placeholder: "tag", value: q.get("tag") ?? "" });
  const fOwner = h("input", { id: "filter-owner", type: "text", placeholder: "owner", value: q.get("owner") ?? "" });
  const count = h("span", { id: "guests-count", class: "muted" });
  const body = h("tbody");
  const selectAll = h("input", { type: "checkbox", id: "select-all", "aria-label": "select all guests" });
  const bulk = (action: string, label: string) => h("button", { type: "button", id: `bulk-${action}`, class: action === "delete" ? "danger" : "secondary", dataset: { action } }, label);
  const bulkBar = h(
    "div",
    { class: "toolbar", id: "bulk-actions", role: "group", "aria-label": "bulk actions on selected guests" },
    h("span", { class: "muted" }, "Selected: "),
    bulk("start", "Start"),
    bulk("shutdown", "Shut down"),
    bulk("reboot", "Reboot"),
    bulk("delete", "Delete"),
  );
  const filters = h(
    "form",
    { class: "filters", id: "guest-filters", role: "search" },
    h("label", { for: "filter-state" }, "State"),
    fState,
    h("label", { for: "filter-node" }, "Node"),
    fNode,
    h("label", { for: "filter-tag" }, "Tag"),
    fTag,
    h("label", { for: "filter-owner" }, "Owner"),
    fOwner,
    h("button", { type: "submit", id: "filter-apply", class: "secondary" }, "Filter"),
  );
  const headCheck = h("th", { scope: "col" }, selectAll);
  const tbl = table("guests-table", ["Name", "State", "Node", "IP", "Owner", "Tags", "Result"], body);
  tbl.querySelector("thead tr")?.prepend(headCheck);
  replace(
    root,
    h(
      "section",
      null,
      h("div", { class: "title-row" }, h("h1", null, "Guests"), h("a", { href: "#/guests/new", id: "new-guest", class: "button" }, "New guest")),
      filters,
      bulkBar,
      count,
      tbl,
    ),
  );

  const nodes = await nodeNames();
  for (const n of nodes.values()) fNode.append(h("option", { value: n.id }, n.hostname || n.id));
  if (q.get("node")) {
    if (![...fNode.options].some((o) => o.value === q.get("node"))) fNode.append(h("option", { value: q.get("node") ?? "" }, q.get("node") ?? ""));
    fNode.value = q.get("node") ?? "";
  }

  let guests: Guest[] = [];
  let owners = new Map<string, string>();
  const ownerOf = (g: Guest): string => (g.ownerId ? owners.get(g.ownerId) ?? g.ownerId : "");

  const row = (g: Guest): HTMLTableRowElement => {
    const check = h("input", { type: "checkbox", class: "select", "aria-label": `select ${g.name}`, value: g.id });
    const node = g.nodeId ? nodes.get(g.nodeId)?.hostname ?? g.nodeId : "";
    return h(
      "tr",
      { dataset: { guestId: g.id } },
      h("td", null, check),
      h("td", { class: "name" }, h("a", { href: `#/guests/${encodeURIComponent(g.id)}` }, g.name)),
      h("td", { class: "state", dataset: { state: g.state } }, g.state),
      h("td", { class: "node" }, g.nodeId ? h("a", { href: `#/nodes/${encodeURIComponent(g.nodeId)}` }, node) : ""),
      h("td", { class: "ip" }, g.ip ?? ""),
      h("td", { class: "owner" }, ownerOf(g)),
      h("td", { class: "tags" }, g.tags.map((t) => h("span", { class: "tag" }, t))),
      h("td", { class: "result" }),
    );
  };

  let loading = false;
  const load = async () => {
    if (loading) return;
    loading = true;
    try {
      const req = {
        state: (fState.value || undefined) as GuestState | undefined,
        node: fNode.value || undefined,
        tag: fTag.value.trim() || undefined,
        limit: 1000,
      };
      [guests, owners] = await Promise.all([api().guests.guestList(req), owners.size ? owners : userNames()]);
      const owner = fOwner.value.trim().toLowerCase();
      const shown = owner ? guests.filter((g) => ownerOf(g).toLowerCase().includes(owner)) : guests;
      // Keep the selection and results across reloads.
      const checked = new Set([...body.querySelectorAll<HTMLInputElement>("input.select:checked")].map((c) => c.value));
      const results = new Map([...body.querySelectorAll<HTMLElement>("tr")].map((tr) => [tr.dataset.guestId ?? "", tr.querySelector("td.result")]));
      replace(
        body,
        shown.map((g) => {
          const tr = row(g);
          if (checked.has(g.id)) (tr.querySelector("input.select") as HTMLInputElement).checked = true;
          const old = results.get(g.id);
          if (old && old.childNodes.length) tr.querySelector("td.result")?.replaceWith(old);
          return tr;
        }),
      );
      if (!shown.length) body.append(h("tr", { class: "empty" }, h("td", { colspan: 8 }, "No guests.")));
      count.textContent = `${shown.length} guest${shown.length === 1 ? "" : "s"}${guests.length >= 1000 ? " (the first 1000: narrow the filters)" : ""}`;
    } catch (e) {
      await showError(e);
    } finally {
      loading = false;
    }
  };

  let reloadTimer: ReturnType<typeof setTimeout> | undefined;
  const reloadSoon = () => {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => void load(), 500);
  };
  onLeave(() => clearTimeout(reloadTimer));

  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    void load();
  });
  for (const f of [fState, fNode]) f.addEventListener("change", () => void load());
  selectAll.addEventListener("change", () => {
    for (const c of body.querySelectorAll<HTMLInputElement>("input.select")) c.checked = selectAll.checked;
  });

  bulkBar.addEventListener("click", async (e) => {
    const b = (e.target as HTMLElement).closest("button");
    if (!b) return;
    const action = b.dataset.action ?? "";
    const ids = [...body.querySelectorAll<HTMLInputElement>("input.select:checked")].map((c) => c.value);
    if (!ids.length) {
      await showError(new Error("Select at least one guest first."));
      return;
    }
    if (action === "delete" && !(await confirmDialog(`Delete ${ids.length} guest(s) and their disks?`, "Delete"))) return;
    await Promise.all(
      ids.map(async (id) => {
        const cell = body.querySelector<HTMLElement>(`tr[data-guest-id="${CSS.escape(id)}"] td.result`);
        const name = guests.find((g) => g.id === id)?.name ?? id;
        try {
          const acc =
            action === "delete"
              ? await api().guests.guestDelete({ id })
              : await api().guests.guestAction({ id, action: action as GuestAction });
          if (cell) replace(cell, opProgress(acc.operationId, action, (st) => {
            if (cell) cell.dataset.result = st;
            if (action === "delete" && st === "succeeded") reloadSoon();
          }).el);
          if (cell) cell.dataset.result = "accepted";
        } catch (err) {
          const f = await failure(err);
          if (cell) {
            replace(cell, h("span", { class: "bad" }, f.message));
            cell.dataset.result = "error";
          } else {
            await showError(new Error(`${name}: ${f.message}`));
          }
        }
      }),
    );
  });

  // Live updates (S64): states change in place; new or vanished guests reload the list.
  onPage(["guest.state"], (ev) => {
    const d = (ev.data ?? {}) as { state?: string; guest_id?: string };
    const id = d.guest_id ?? ev.subject;
    const td = body.querySelector<HTMLElement>(`tr[data-guest-id="${CSS.escape(id)}"] td.state`);
    if (td && d.state) {
      td.textContent = d.state;
      td.dataset.state = d.state;
      const g = guests.find((x) => x.id === id);
      if (g) g.state = d.state as GuestState;
      if (fState.value && fState.value !== d.state) reloadSoon();
    } else if (!td) {
      reloadSoon();
    }
  });
  onPage(["operation"], (ev) => {
    const d = (ev.data ?? {}) as { kind?: string; state?: string };
    if ((d.kind === "guest.create" || d.kind === "guest.delete") && (d.state === "succeeded" || d.state === "failed" || d.state === "pending")) reloadSoon();
  });

  await load();
}
