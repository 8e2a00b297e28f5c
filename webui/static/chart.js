// Hand-drawn SVG charts (no library, no CDN): tokens per hour as bars, and row sparklines.
import { fmtInt, fmtShort, svg } from "./common.js";

const HOUR = 3600;

function hourLabel(ts) {
  const d = new Date(ts * 1000);
  return `${String(d.getHours()).padStart(2, "0")}:00`;
}

// A "nice" axis maximum: 1, 2 or 5 times a power of ten, at least the data's maximum.
function niceMax(value) {
  if (value <= 0) return 10;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

export function barChart(container, series, start, label) {
  const width = Math.max(280, container.clientWidth || 600);
  const height = 220;
  const pad = { left: 44, right: 8, top: 10, bottom: 24 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const top = niceMax(Math.max(...series, 0));
  const slot = plotW / series.length;
  const barW = Math.max(2, slot * 0.72);
  const chart = svg("svg", {
    class: "chart",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": label,
  });
  for (const fraction of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - fraction);
    chart.append(
      svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y, y2: y }),
      svg("text", { class: "axis", x: pad.left - 6, y: y + 4, "text-anchor": "end" }, fmtShort(top * fraction)),
    );
  }
  const every = width < 480 ? 8 : 4;
  series.forEach((value, i) => {
    const h = top ? (value / top) * plotH : 0;
    const x = pad.left + i * slot + (slot - barW) / 2;
    const from = start + i * HOUR;
    const bar = svg(
      "rect",
      { class: "col", x, y: pad.top + plotH - h, width: barW, height: Math.max(h, value ? 1 : 0), rx: 2 },
      svg("title", {}, `${hourLabel(from)}–${hourLabel(from + HOUR)}: ${fmtInt(value)} tokens`),
    );
    chart.append(bar);
    if (i % every === 0 || i === series.length - 1) {
      chart.append(
        svg("text", { class: "axis", x: x + barW / 2, y: height - 6, "text-anchor": "middle" }, hourLabel(from)),
      );
    }
  });
  container.replaceChildren(chart);
}

export function sparkline(series) {
  const width = 96;
  const height = 20;
  const top = Math.max(...series, 0);
  const slot = width / series.length;
  const spark = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" });
  series.forEach((value, i) => {
    if (!value) return;
    const h = Math.max(1, (value / top) * height);
    spark.append(svg("rect", { x: i * slot + 0.5, y: height - h, width: Math.max(1, slot - 1), height: h }));
  });
  return spark;
}
