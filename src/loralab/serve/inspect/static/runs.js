// The runs page: studies and training runs under the server's runs folder.
"use strict";
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const file = (p) => "api/runs/file/" + p.split("/").map(encodeURIComponent).join("/");

function runTable(runs) {
  if (!runs.length) return "<p class='muted'>no runs</p>";
  const rows = runs.map((r) => {
    const m = Object.entries(r.metrics).slice(0, 6).map(([k, v]) => `${esc(k)} = ${typeof v === "number" ? +v.toFixed(4) : esc(v)}`).join("<br>");
    const ins = r.adapter ? `<a class="inspect" href="./?load=${encodeURIComponent(r.adapter)}&name=${encodeURIComponent(r.name)}">inspect</a>` : "";
    const labels = Object.entries(r.labels).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(", ");
    return `<tr><td>${esc(r.name)}<br><span class="muted">${esc(r.id)}</span></td><td>${labels}</td><td>${esc(r.state)}${r.error ? "<br><span class='muted'>" + esc(r.error).slice(0, 120) + "</span>" : ""}</td>
      <td>${esc(r.domain)}</td><td>${m}</td><td>${ins}</td></tr>`;
  }).join("");
  return `<table><tr><th>run</th><th>labels</th><th>state</th><th>domain</th><th>metrics</th><th></th></tr>${rows}</table>`;
}

async function main() {
  const r = await fetch("api/runs");
  const d = await r.json();
  if (!r.ok) { const e = document.getElementById("error"); e.textContent = d.detail ?? (d.error && d.error.message); e.hidden = false; return; }
  let html = `<p class="muted">${esc(d.root)}</p>`;
  d.studies.forEach((s) => {
    html += `<section class="study"><h2>${esc(s.name)}</h2>${s.description ? "<p>" + esc(s.description) + "</p>" : ""}<p>`;
    if (s.report) html += `<a href="${file(s.report)}">report (plots)</a> `;
    if (s.results) html += `<a href="${file(s.results)}">results.csv</a>`;
    html += `</p>${runTable(s.runs)}</section>`;
  });
  html += `<section><h2>Training runs</h2>${runTable(d.runs)}</section>`;
  document.getElementById("content").innerHTML = html;
}
main();
