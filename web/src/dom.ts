// DOM building without HTML strings: every value is set as text or as a property, so
// nothing from the API is ever parsed as markup (no HTML-string APIs anywhere in the console).

export type Child = Node | string | number | null | undefined | false | Child[];
export type Attrs = Record<string, unknown>;

/**
 * `h("a", { href: "#/", class: "x", onclick: fn, dataset: { id } }, "text", child)`.
 * `on*` keys become listeners, `class`/`for` map to their properties, booleans toggle
 * attributes, everything else is `setAttribute`.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el: Element, attrs: Attrs): void {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (k === "dataset" && typeof v === "object") {
      for (const [dk, dv] of Object.entries(v as Record<string, unknown>)) {
        if (dv !== undefined && dv !== null) (el as HTMLElement).dataset[dk] = String(dv);
      }
    } else if (k === "value" && "value" in el) {
      (el as HTMLInputElement).value = String(v);
    } else if (k === "checked" && "checked" in el) {
      (el as HTMLInputElement).checked = Boolean(v);
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag: string, attrs?: Record<string, string | number>, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs ?? {})) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

export function fmtTime(s?: string | Date | null): string {
  if (!s) return "";
  const d = typeof s === "string" ? new Date(s) : s;
  if (Number.isNaN(d.getTime())) return String(s);
  return d.toLocaleString();
}

export function fmtMib(mib?: number | null): string {
  if (mib === undefined || mib === null) return "";
  if (mib >= 1024 * 1024) return `${(mib / 1024 / 1024).toFixed(1)} TiB`;
  if (mib >= 1024) return `${(mib / 1024).toFixed(1)} GiB`;
  return `${mib} MiB`;
}

export function fmtBytes(b?: number | null): string {
  if (b === undefined || b === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(secs?: number | null): string {
  if (secs === undefined || secs === null) return "";
  const s = Math.max(0, Math.round(secs));
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${ss}s`;
  return `${ss}s`;
}

/** A table whose wrapper scrolls horizontally on narrow screens. */
export function table(id: string | null, head: string[], body: HTMLTableSectionElement): HTMLElement {
  return h(
    "div",
    { class: "table-wrap" },
    h("table", { id: id ?? undefined }, h("thead", null, h("tr", null, head.map((t) => h("th", { scope: "col" }, t)))), body),
  );
}

/** A labelled form field: `<label for=id>label</label> control <span.field-error>`. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id;
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { class: "hint" }, hint) : null,
    h("span", { class: "field-error", dataset: { for: id }, role: "alert" }),
  );
}

/** A password input with a show/hide toggle button (S15). */
export function passwordInput(id: string, toggleId: string, attrs: Attrs = {}): { wrap: HTMLElement; input: HTMLInputElement } {
  const input = h("input", { id, type: "password", autocomplete: "current-password", ...attrs });
  const toggle = h("button", { type: "button", id: toggleId, class: "secondary small", "aria-pressed": "false", "aria-controls": id }, "show");
  toggle.addEventListener("click", () => {
    const show = input.type === "password";
    input.type = show ? "text" : "password";
    toggle.textContent = show ? "hide" : "show";
    toggle.setAttribute("aria-pressed", String(show));
  });
  return { wrap: h("span", { class: "password" }, input, toggle), input };
}

/** Confirms with a modal `dialog` (never window.confirm). Resolves true on OK. */
export function confirmDialog(message: string, okLabel = "OK", id = "confirm-dialog"): Promise<boolean> {
  return new Promise((resolve) => {
    const ok = h("button", { type: "button", class: "danger", id: `${id}-ok` }, okLabel);
    const cancel = h("button", { type: "button", class: "secondary", id: `${id}-cancel` }, "Cancel");
    const dlg = h("dialog", { id, "aria-labelledby": `${id}-msg` }, h("p", { id: `${id}-msg` }, message), h("div", { class: "buttons" }, cancel, ok));
    let answer = false;
    ok.addEventListener("click", () => {
      answer = true;
      dlg.close();
    });
    cancel.addEventListener("click", () => dlg.close());
    dlg.addEventListener("close", () => {
      dlg.remove();
      resolve(answer);
    });
    document.body.appendChild(dlg);
    dlg.showModal();
    cancel.focus();
  });
}
