// Metric charts: SVG built with createElementNS (no HTML), average and maximum over a
// chosen range (S87).
import type { MetricHistory, MetricSeries } from "../../sdk/typescript/src/index";
import { h, svg } from "./dom";

export const RANGES: [string, string][] = [
  ["1h", "1 hour"],
  ["6h", "6 hours"],
  ["24h", "24 hours"],
  ["7d", "7 days"],
  ["15d", "15 days"],
];

export function rangeSelect(id: string): HTMLSelectElement {
  return h("select", { id }, RANGES.map(([v, l]) => h("option", { value: v }, l)));
}

function fmtValue(name: string, x: number): string {
  if (name.includes("bytes")) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(x) >= 1024 && i < u.length - 1) {
      x /= 1024;
      i++;
    }
    return `${x.toFixed(x < 10 && i ? 1 : 0)} ${u[i]}${name.includes("per_second") ? "/s" : ""}`;
  }
  if (Math.abs(x) >= 100) return x.toFixed(0);
  return x.toFixed(2);
}

function path(s: MetricSeries, x: (t: number) => number, y: (v: number) => number): string {
  return s.atMs.map((t, i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(s.values[i]).toFixed(1)}`).join("");
}

/** One chart per series name: the `avg` line and, dashed, the `max` line. */
export function charts(avg: MetricHistory, max: MetricHistory | null): HTMLElement {
  const wrap = h("div", { class: "grid charts" });
  const names = avg.series.map((s) => s.name);
  for (const name of names) {
    const a = avg.series.find((s) => s.name === name);
    const m = max?.series.find((s) => s.name === name);
    if (!a || !a.atMs.length) continue;
    const all = [...a.values, ...(m?.values ?? [])];
    const lo = Math.min(0, ...all);
    const hi = Math.max(...all, lo + 1e-9);
    const t0 = avg.fromMs || Math.min(...a.atMs);
    const t1 = Math.max(Date.parse(avg.to) || 0, ...a.atMs, t0 + 1);
    const W = 600;
    const H = 180;
    const L = 56;
    const B = 20;
    const x = (t: number) => L + ((t - t0) / (t1 - t0)) * (W - L - 4);
    const y = (v: number) => 6 + (1 - (v - lo) / (hi - lo)) * (H - B - 6);
    const title = `${name}: avg and max over ${avg.stepSeconds}s steps`;
    const chart = svg(
      "svg",
      { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title },
      svg("title", {}, title),
      svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }),
      svg("line", { class: "axis", x1: L, y1: 6, x2: L, y2: H - B }),
      svg("text", { x: 2, y: 14 }, fmtValue(name, hi)),
      svg("text", { x: 2, y: H - B }, fmtValue(name, lo)),
      svg("text", { x: L, y: H - 4 }, new Date(t0).toLocaleString()),
      svg("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, new Date(t1).toLocaleString()),
      m && m.atMs.length ? svg("path", { class: "max", d: path(m, x, y) }) : null,
      svg("path", { class: "avg", d: path(a, x, y) }),
    );
    const last = a.values[a.values.length - 1];
    wrap.append(
      h(
        "figure",
        { class: "card chart-card", dataset: { series: name } },
        h("figcaption", null, h("strong", null, name), " ", h("span", { class: "muted" }, `now ${fmtValue(name, last)}`)),
        chart,
        h("div", { class: "legend" }, h("span", { class: "avg" }, "average"), h("span", { class: "max" }, "maximum")),
      ),
    );
  }
  if (!wrap.childNodes.length) wrap.append(h("p", { class: "muted" }, "No metrics in this range."));
  return wrap;
}
