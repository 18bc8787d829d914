// #/pools and #/pools/<id>: IP pools, every address of a pool with its state, and
// reserve (never handed out, e.g. a VIP: S97) / disable / enable per address (S81).
import type { Address, AddressState, Pool } from "../../../sdk/typescript/src/index";
import { api, attempt, failure, isOperator, showError } from "../app";
import { confirmDialog, field, fmtTime, h, replace, table } from "../dom";
import * as v from "../validate";

export async function renderPools(root: HTMLElement): Promise<void> {
  const body = h("tbody");
  const load = async () => {
    const pools = await api().res.poolList();
    replace(
      body,
      pools.length
        ? pools.map((p) =>
            h(
              "tr",
              { dataset: { poolId: p.id } },
              h("td", null, h("a", { href: `#/pools/${encodeURIComponent(p.id)}` }, p.name)),
              h("td", null, p.cidr),
              h("td", null, p.gateway ?? ""),
              h("td", null, p.bridge || "(node default)"),
              h("td", null, p.vlan ? String(p.vlan) : ""),
              h("td", null, String(p.size)),
              h("td", null, String(p.used)),
              h("td", null, String(p.free)),
              h("td", null, String(p.reserved)),
              h("td", null, String(p.disabled)),
            ),
          )
        : h("tr", null, h("td", { colspan: 10 }, "No IP pools.")),
    );
  };
  const section = h(
    "section",
    null,
    h("h1", null, "IP pools"),
    table("pools-table", ["Name", "Network", "Gateway", "Bridge", "VLAN", "Size", "Used", "Free", "Reserved", "Disabled"], body),
  );
  replace(root, section);
  if (isOperator()) section.append(createPoolForm(() => void load()));
  await load();
}

function createPoolForm(done: () => void): HTMLElement {
  const name = h("input", { id: "pool-name", type: "text" });
  const cidr = h("input", { id: "pool-cidr", type: "text", placeholder: "198.51.100.0/24" });
  const start = h("input", { id: "pool-range-start", type: "text" });
  const end = h("input", { id: "pool-range-end", type: "text" });
  const gw = h("input", { id: "pool-gateway", type: "text" });
  const dns = h("input", { id: "pool-dns", type: "text", placeholder: "comma separated" });
  const bridge = h("input", { id: "pool-bridge", type: "text" });
  const vlan = h("input", { id: "pool-vlan", type: "number", min: 1, max: 4094 });
  const err = h("p", { id: "pool-error", class: "form-error", role: "alert" });
  const form = h(
    "form",
    { id: "pool-form", class: "card", novalidate: true },
    h("h2", null, "New pool"),
    field("Name", name),
    field("Network (CIDR)", cidr),
    field("First address", start),
    field("Last address", end),
    field("Gateway (optional)", gw),
    field("DNS servers (optional)", dns),
    field("Bridge (optional)", bridge),
    field("VLAN (optional)", vlan),
    err,
    h("button", { type: "submit", id: "pool-create" }, "Create pool"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    const cidrOk = /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/.test(cidr.value.trim()) && Number(cidr.value.split("/")[1]) <= 32;
    const dnsList = dns.value.split(",").map((s) => s.trim()).filter((s) => s);
    const ok = [
      v.mark(form, "pool-name", name.value.trim() ? null : "Enter a name."),
      v.mark(form, "pool-cidr", cidrOk && !v.ipv4(cidr.value.split("/")[0]) ? null : "Enter a network such as 198.51.100.0/24."),
      v.mark(form, "pool-range-start", v.ipv4(start.value)),
      v.mark(form, "pool-range-end", v.ipv4(end.value)),
      v.mark(form, "pool-gateway", gw.value.trim() ? v.ipv4(gw.value) : null),
      v.mark(form, "pool-dns", dnsList.map((d) => v.ipv4(d)).find((x) => x) ?? null),
      v.mark(form, "pool-vlan", vlan.value ? v.intIn(vlan.value, 1, 4094, "a VLAN id") : null),
    ].every((x) => x);
    if (!ok) return;
    try {
      await api().res.poolCreate({
        createPool: {
          name: name.value.trim(),
          cidr: cidr.value.trim(),
          rangeStart: start.value.trim(),
          rangeEnd: end.value.trim(),
          gateway: gw.value.trim() || undefined,
          dns: dnsList.length ? dnsList : undefined,
          bridge: bridge.value.trim() || undefined,
          vlan: vlan.value ? Number(vlan.value) : undefined,
        },
      });
      form.reset();
      done();
    } catch (e2) {
      err.textContent = (await failure(e2)).message;
    }
  });
  return form;
}

async function allAddresses(id: string): Promise<Address[]> {
  const out: Address[] = [];
  const limit = 4096;
  for (let offset = 0; ; offset += limit) {
    const page = await api().res.poolAddresses({ id, limit, offset });
    out.push(...page);
    if (page.length < limit) return out;
  }
}

export async function renderPool(root: HTMLElement, id: string): Promise<void> {
  let pool: Pool;
  try {
    pool = await api().res.poolGet({ id });
  } catch (e) {
    const f = await failure(e);
    if (f.status === 404) {
      replace(root, h("section", { id: "not-found" }, h("h1", null, "Pool not found"), h("p", null, "not found")));
      return;
    }
    throw e;
  }
  const summary = h("p", { id: "pool-summary" });
  const fillSummary = (p: Pool) =>
    (summary.textContent = `${p.cidr}, gateway ${p.gateway ?? "none"}, DNS ${p.dns.join(", ") || "none"}, ${p.size} addresses: ${p.used} used, ${p.free} free, ${p.reserved} reserved, ${p.disabled} disabled. Ranges: ${p.ranges.map((r) => `${r.start}–${r.end}`).join(", ")}`);
  fillSummary(pool);
  const filter = h("select", { id: "address-filter" }, h("option", { value: "" }, "all"), ["free", "allocated", "reserved", "disabled"].map((s) => h("option", { value: s }, s)));
  const body = h("tbody");
  const operator = isOperator();

  const setState = async (ip: string, st: AddressState, tr: HTMLElement) => {
    let note: string | undefined;
    if (st === "reserved" || st === "disabled") {
      const n = tr.querySelector<HTMLInputElement>("input.note");
      note = n?.value.trim() || undefined;
    }
    try {
      await api().res.poolSetAddressState({ id, setAddressState: { start: ip, state: st, note } });
      await reloadRow(ip);
      pool = await api().res.poolGet({ id });
      fillSummary(pool);
    } catch (e) {
      await showError(e);
    }
  };
  const row = (a: Address): HTMLTableRowElement => {
    const tr = h("tr", { dataset: { ip: a.ip, state: a.state } });
    const buttons: HTMLElement[] = [];
    if (operator) {
      if (a.state === "free") {
        buttons.push(h("button", { type: "button", class: "secondary small reserve", "aria-label": `reserve ${a.ip}` }, "Reserve"));
        buttons.push(h("button", { type: "button", class: "secondary small disable", "aria-label": `disable ${a.ip}` }, "Disable"));
      } else if (a.state === "reserved" || a.state === "disabled") {
        buttons.push(h("button", { type: "button", class: "secondary small enable", "aria-label": `enable ${a.ip}` }, a.state === "reserved" ? "Release" : "Enable"));
      }
    }
    for (const b of buttons) {
      b.addEventListener("click", () => {
        const st: AddressState = b.classList.contains("reserve") ? "reserved" : b.classList.contains("disable") ? "disabled" : "free";
        void setState(a.ip, st, tr);
      });
    }
    replace(
      tr,
      h("td", { class: "ip" }, a.ip),
      h("td", { class: "ip-state", dataset: { state: a.state } }, a.state),
      h("td", null, a.guestId ? h("a", { href: `#/guests/${encodeURIComponent(a.guestId)}` }, a.guestId) : ""),
      h("td", null, a.note ?? ""),
      h("td", null, operator && a.state === "free" ? h("input", { type: "text", class: "note", placeholder: "note (why)", "aria-label": `note for ${a.ip}` }) : null, buttons),
    );
    return tr;
  };
  const reloadRow = async (ip: string) => {
    // The address's new state: reread the list (one round trip; pools are at most a
    // few thousand addresses in practice).
    const list = await allAddresses(id);
    const a = list.find((x) => x.ip === ip);
    const tr = body.querySelector<HTMLElement>(`tr[data-ip="${CSS.escape(ip)}"]`);
    if (a && tr) tr.replaceWith(row(a));
  };
  const load = async () => {
    const list = await allAddresses(id);
    const shown = filter.value ? list.filter((a) => a.state === filter.value) : list;
    replace(body, shown.length ? shown.map(row) : h("tr", null, h("td", { colspan: 5 }, "No addresses.")));
  };
  filter.addEventListener("change", () => void attempt(load));

  // Ranges and bulk state changes.
  const children: HTMLElement[] = [];
  if (operator) {
    const rs = h("input", { id: "range-start", type: "text" });
    const re = h("input", { id: "range-end", type: "text" });
    const addForm = h("form", { id: "range-form", class: "filters", novalidate: true }, field("First address", rs), field("Last address", re), h("button", { type: "submit", id: "range-add" }, "Add range"));
    addForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (![v.mark(addForm, "range-start", v.ipv4(rs.value)), v.mark(addForm, "range-end", v.ipv4(re.value))].every((x) => x)) return;
      const p = await attempt(() => api().res.poolAddRange({ id, addRange: { start: rs.value.trim(), end: re.value.trim() } }));
      if (p) {
        pool = p;
        fillSummary(p);
        addForm.reset();
        await attempt(load);
      }
    });
    const del = h("button", { type: "button", id: "pool-delete", class: "danger" }, "Delete pool");
    del.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete pool ${pool.name}?`, "Delete"))) return;
      const ok = await attempt(() => api().res.poolDelete({ id }));
      if (ok !== undefined) location.hash = "#/pools";
    });
    children.push(h("h2", null, "Add addresses"), addForm, h("div", { class: "buttons" }, del));
  }
  replace(
    root,
    h(
      "section",
      { id: "pool", dataset: { poolId: id } },
      h("p", null, h("a", { href: "#/pools" }, "← IP pools")),
      h("h1", { id: "pool-name" }, pool.name),
      summary,
      h("p", { class: "muted" }, `Created ${fmtTime(pool.createdAt)}. Reserve keeps an address out of allocation for good (e.g. a VIP); disable takes a broken one out.`),
      h("div", { class: "toolbar" }, h("label", { for: "address-filter" }, "Show"), filter),
      table("addresses-table", ["Address", "State", "Guest", "Note", ""], body),
      children,
    ),
  );
  await load();
}
