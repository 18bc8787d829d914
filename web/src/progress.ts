// Operation progress bars: a `progress[data-op-id]` that follows the `operation` events
// of one operation (percent, stage, state), checked against the API now and then.
import type { Operation } from "../../sdk/typescript/src/index";
import { api, onPage, onLeave } from "./app";
import { h } from "./dom";

export const TERMINAL = ["succeeded", "failed", "cancelled"];

export interface OpView {
  el: HTMLElement;
  /** Resolves with the final state (`succeeded`, `failed`, `cancelled`). */
  done: Promise<string>;
}

/**
 * A progress bar for operation `opId`, labelled `label`. `onEnd` runs once when it ends.
 */
export function opProgress(opId: string, label: string, onEnd?: (state: string, error?: string) => void): OpView {
  const bar = h("progress", { max: 100, value: 0, dataset: { opId }, "aria-label": `${label} progress` });
  const stage = h("span", { class: "op-stage" }, "queued");
  const pct = h("span", { class: "op-percent" }, "0%");
  const el = h("div", { class: "op", dataset: { opId } }, h("span", { class: "op-label" }, label), bar, pct, stage);
  let ended = false;
  let lastSeen = Date.now();
  let resolve!: (s: string) => void;
  const done = new Promise<string>((r) => (resolve = r));

  const apply = (o: { state?: string; stage?: string; percent?: number; error?: string | null; message?: string }) => {
    if (ended) return;
    lastSeen = Date.now();
    if (typeof o.percent === "number") {
      bar.value = Math.max(bar.value, Math.min(100, o.percent));
      pct.textContent = `${Math.round(bar.value)}%`;
    }
    const words = [o.state, o.stage, o.message].filter((x) => x).join(" · ");
    if (words) stage.textContent = words;
    if (o.state && TERMINAL.includes(o.state)) {
      ended = true;
      el.dataset.state = o.state;
      if (o.state === "succeeded") {
        bar.value = 100;
        pct.textContent = "100%";
      }
      if (o.error) stage.textContent = `${o.state}: ${o.error}`;
      off();
      clearInterval(timer);
      onEnd?.(o.state, o.error ?? undefined);
      resolve(o.state);
    } else if (o.state) {
      el.dataset.state = o.state;
    }
  };
  const fromOp = (op: Operation) =>
    apply({ state: op.state, stage: op.progress.stage, percent: op.progress.percent, error: op.error, message: op.progress.message });

  const off = onPage(["operation"], (ev) => {
    if (ev.subject !== opId) return;
    const d = (ev.data ?? {}) as Record<string, unknown>;
    apply({
      state: d.state as string | undefined,
      stage: d.stage as string | undefined,
      percent: d.percent as number | undefined,
      error: d.error as string | undefined,
      message: d.message as string | undefined,
    });
  });
  // The event stream is the live path; this catches a missed event (e.g. a reconnect).
  const sync = () =>
    api()
      .ops.operationGet({ id: opId })
      .then(fromOp)
      .catch(() => {});
  const timer = setInterval(() => {
    if (!ended && Date.now() - lastSeen > 10000) void sync();
  }, 5000);
  onLeave(() => clearInterval(timer));
  void sync();
  return { el, done };
}
