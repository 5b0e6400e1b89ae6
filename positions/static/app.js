// The desk page: renders /events (server-sent events) into the header, tables and chart.
// Every name from the wire is set with textContent, never parsed as HTML.
"use strict";

const ALERT_BPS = 50; // deviations beyond this many basis points are highlighted
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
const CHART = { width: 960, height: 320, left: 48, right: 12, top: 12, bottom: 28 };
const SVG = "http://www.w3.org/2000/svg";

const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const shares = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const percent = new Intl.NumberFormat("en-US", { minimumFractionDigits: 3, maximumFractionDigits: 3 });
const bps = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1, signDisplay: "always" });
const signedMoney = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2, signDisplay: "always" });

let latest = null;
let history = [];

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells, className) {
  const tr = el("tr", undefined, className);
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function headRow(headings) {
  const tr = el("tr");
  for (const heading of headings) tr.append(el("th", heading));
  return tr;
}

function deviationCell(text, deviationBp) {
  return el("td", text, Math.abs(deviationBp) > ALERT_BPS ? "alert" : "");
}

function renderFacts(doc) {
  const facts = document.getElementById("facts");
  const split = doc.split
    ? `${doc.split.source}#${doc.split.seq}` + (doc.split.received
      ? `, received ${new Date(doc.split.received * 1000).toLocaleTimeString()}`
      : doc.split.first_seen ? `, first seen ${new Date(doc.split.first_seen * 1000).toLocaleTimeString()}` : "")
    : "none yet (fills wait for the first split)";
  const counts = doc.counts || {};
  const prices = Object.entries(doc.prices || {}).map(([t, p]) => `${t} ${money.format(p)}`).join("  ");
  const entries = [
    ["Snapshot time", `${doc.time_local} (browser: ${new Date(doc.time * 1000).toString()})`],
    ["Controller", doc.instance],
    ["Split in force", split + (doc.paused ? "  PAUSED" : "")],
    ["Counts", `${Object.keys(doc.accounts).length} accounts, ${shares.format(counts.fills || 0)} fills allocated, `
      + `${shares.format(counts.pending || 0)} pending, ${shares.format(counts.rejected || 0)} rejected, `
      + `${shares.format(counts.duplicates || 0)} duplicates`],
    ["Last prices", prices || "none yet"],
    ["Since this page's server started", `${doc.controller_restarts} controller restart(s), ${doc.snapshots_missed} snapshot(s) missed`],
  ];
  facts.replaceChildren();
  for (const [term, detail] of entries) facts.append(el("dt", term), el("dd", detail));
  const age = el("dd", "", "age");
  age.id = "age";
  facts.append(el("dt", "Age"), age);
  updateAge();
}

function updateAge() {
  const age = document.getElementById("age");
  if (!age || !latest) return;
  const seconds = Math.max(0, Date.now() / 1000 - latest.time);
  age.textContent = `${seconds.toFixed(0)} s`;
  age.className = seconds > 3 * latest.interval_s ? "stale" : "";
}

function renderAccounts(doc) {
  const table = document.getElementById("accounts");
  table.replaceChildren(headRow(["Account", "Book value", "Market value", "Weight %", "Target %", "Dev bp", "Dev value"]));
  let beyond = 0;
  for (const [name, a] of Object.entries(doc.accounts)) {
    if (Math.abs(a.deviation_bp) > ALERT_BPS) beyond += 1;
    const tr = row([name, money.format(a.book_value), money.format(a.market_value),
      percent.format(a.weight_pct), percent.format(a.target_pct),
      deviationCell(bps.format(a.deviation_bp), a.deviation_bp),
      deviationCell(signedMoney.format(a.deviation_value), a.deviation_bp)]);
    tr.dataset.account = name;
    table.append(tr);
  }
  table.append(row(["Total", money.format(doc.totals.book_value), money.format(doc.totals.market_value),
    Object.keys(doc.accounts).length ? percent.format(100) : "", "", "", ""], "total"));
  document.getElementById("never-move").hidden = beyond === 0;
}

function renderPositions(doc) {
  const table = document.getElementById("positions");
  const tickers = Object.keys(doc.totals.positions);
  table.replaceChildren(headRow(["Account", ...tickers]));
  for (const [name, a] of Object.entries(doc.accounts)) {
    const tr = row([name, ...tickers.map((t) => shares.format(a.positions[t] || 0))]);
    tr.dataset.account = name;
    table.append(tr);
  }
  table.append(row(["Total", ...tickers.map((t) => shares.format(doc.totals.positions[t]))], "total"));
  table.append(row(["Last price", ...tickers.map((t) => (t in doc.prices ? money.format(doc.prices[t]) : "none"))], "total"));
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function renderChart() {
  const box = document.getElementById("chart");
  const points = history.filter((p) => Object.keys(p.weights).length);
  const names = [...new Set(points.flatMap((p) => Object.keys(p.weights)))].sort();
  box.replaceChildren();
  if (points.length === 0) {
    box.append(el("p", "No snapshot with accounts yet.", "dim"));
    return;
  }
  const t0 = points[0].time;
  const t1 = Math.max(points[points.length - 1].time, t0 + 1);
  const top = Math.max(1, ...points.flatMap((p) => [...Object.values(p.weights), ...Object.values(p.targets)]));
  const w = CHART.width - CHART.left - CHART.right;
  const h = CHART.height - CHART.top - CHART.bottom;
  const x = (t) => CHART.left + ((t - t0) / (t1 - t0)) * w;
  const y = (v) => CHART.top + h - (v / top) * h;
  const chart = svg("svg", { viewBox: `0 0 ${CHART.width} ${CHART.height}`, width: CHART.width, height: CHART.height, role: "img" });
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const v = top * fraction;
    chart.append(svg("line", { x1: CHART.left, x2: CHART.left + w, y1: y(v), y2: y(v), stroke: "#e3e5ea" }));
    const label = svg("text", { x: 4, y: y(v) + 4 });
    label.textContent = v.toFixed(1);
    chart.append(label);
  }
  for (const [end, anchor, t] of [[t0, "start", t0], [t1, "end", t1]]) {
    const label = svg("text", { x: x(end), y: CHART.height - 8, "text-anchor": anchor });
    label.textContent = new Date(t * 1000).toLocaleTimeString();
    chart.append(label);
  }
  const legend = el("div", undefined, "legend");
  names.forEach((name, i) => {
    const colour = COLOURS[i % COLOURS.length];
    for (const [series, dash] of [["weights", ""], ["targets", "5 4"]]) {
      const coords = points.filter((p) => name in p[series]).map((p) => `${x(p.time).toFixed(1)},${y(p[series][name]).toFixed(1)}`);
      const line = svg("polyline", { points: coords.join(" "), fill: "none", stroke: colour, "stroke-width": 1.6 });
      if (dash) line.setAttribute("stroke-dasharray", dash);
      chart.append(line);
    }
    const key = el("span", name);
    key.style.setProperty("--colour", colour);
    legend.append(key);
  });
  box.append(chart, legend);
}

function render(doc) {
  latest = doc;
  document.getElementById("title").textContent = `Positions #${doc.seq}`;
  document.getElementById("status").textContent = "Live: updates as snapshots arrive.";
  document.getElementById("notices").textContent = (doc.notices || []).join(" | ");
  renderFacts(doc);
  renderAccounts(doc);
  renderPositions(doc);
  renderChart();
  document.body.dataset.seq = String(doc.seq);
  document.body.dataset.instance = doc.instance;
}

function connect() {
  const events = new EventSource("/events");
  events.addEventListener("history", (event) => {
    history = JSON.parse(event.data);
  });
  events.addEventListener("snapshot", (event) => {
    const doc = JSON.parse(event.data);
    const last = history[history.length - 1];
    if (!last || last.time !== doc.time) {
      history.push({
        time: doc.time,
        weights: Object.fromEntries(Object.entries(doc.accounts).map(([n, a]) => [n, a.weight_pct])),
        targets: Object.fromEntries(Object.entries(doc.accounts).map(([n, a]) => [n, a.target_pct])),
      });
    }
    render(doc);
  });
  events.addEventListener("error", () => {
    document.getElementById("status").textContent = "Disconnected from the position server; retrying...";
  });
}

setInterval(updateAge, 1000);
connect();
