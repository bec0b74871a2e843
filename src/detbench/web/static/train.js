// The Train page: queues a run (POST /api/train/runs) and polls its progress until it ends.
"use strict";

(() => {
  const form = document.getElementById("train-form");
  const token = document.getElementById("token");
  const errorBox = document.getElementById("train-error");
  const button = document.getElementById("train");
  const section = document.getElementById("run");
  const title = document.getElementById("run-title");
  const state = document.getElementById("run-state");
  const progressLine = document.getElementById("run-progress");
  const failure = document.getElementById("run-failure");
  const logBox = document.getElementById("run-log");
  const cancel = document.getElementById("cancel");
  const testLink = document.getElementById("test-model");
  const POLL_MS = 1000;
  let runId = null;

  const showError = (message) => {
    errorBox.textContent = message;
    errorBox.hidden = false;
  };

  const api = async (path, options = {}) => {
    const headers = { Authorization: `Bearer ${token.value}` };
    const response = await fetch(path, { ...options, headers });
    let body = null;
    try {
      body = await response.json();
    } catch (ignored) {
      body = null;
    }
    if (!response.ok || body === null) {
      throw new Error(body && body.error ? body.error : `The server answered ${response.status}.`);
    }
    return body;
  };

  const seconds = (s) => (s >= 90 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(0)} s`);

  const render = (run) => {
    const p = run.progress || {};
    title.textContent = `Run ${run.id}: ${run.cell}`;
    const stage = run.state === "running" && p.stage ? ` (Snakemake rule: ${p.stage})` : "";
    state.textContent = `State: ${run.state}${stage}`;
    state.dataset.state = run.state;
    const parts = [`epoch ${p.epoch || 0} / ${p.epochs || "?"}`];
    if (p.losses) {
      parts.push(`losses: box ${p.losses.box.toFixed(4)}, obj ${p.losses.obj.toFixed(4)}, ` +
        `cls ${p.losses.cls.toFixed(4)}`);
    }
    if (p.interim_map50 !== null && p.interim_map50 !== undefined) {
      parts.push(`interim mAP@0.5 ${p.interim_map50.toFixed(3)}`);
    }
    if (run.evaluation) {
      const e = run.evaluation;
      parts.push(`evaluated: mAP@0.5 ${e.map50.toFixed(3)}, mAP@0.5:0.95 ` +
        `${e.map50_95.toFixed(3)} on the ${e.split} split (${e.num_images} images)`);
    }
    if (run.state === "running" && p.eta_s !== null && p.eta_s !== undefined) {
      parts.push(`training ETA ${seconds(p.eta_s)} (then the evaluation)`);
    }
    progressLine.textContent = parts.join("; ");
    logBox.textContent = [...(p.log_tail || []), ...(p.train_log_tail || [])].join("\n");
    failure.hidden = !run.reason || run.state === "done";
    failure.textContent = run.reason || "";
    cancel.hidden = !["queued", "running"].includes(run.state);
    if (run.test_url) {
      testLink.href = run.test_url;
      testLink.hidden = false;
    }
  };

  const runsSection = document.getElementById("runs");
  const runsBody = document.querySelector("#runs-table tbody");

  const cellOf = (row, content) => {
    const td = document.createElement("td");
    if (typeof content === "string") {
      td.textContent = content;
    } else {
      td.appendChild(content);
    }
    row.appendChild(td);
  };

  // The runs list: a reloaded page finds its runs again.
  const listRuns = async () => {
    if (!token.value) {
      return;
    }
    try {
      const body = await api("/api/train/runs");
      runsBody.replaceChildren();
      body.runs.forEach((run) => {
        const row = document.createElement("tr");
        cellOf(row, String(run.id));
        cellOf(row, run.cell);
        cellOf(row, run.reason && run.state !== "done" ? `${run.state}: ${run.reason}` : run.state);
        const link = document.createElement("a");
        link.textContent = run.test_url ? "Test this model" : "Show progress";
        link.href = run.test_url || "#";
        if (!run.test_url) {
          link.addEventListener("click", (event) => {
            event.preventDefault();
            follow(run.id);
          });
        }
        cellOf(row, link);
        runsBody.appendChild(row);
      });
      runsSection.hidden = false;
    } catch (error) {
      showError(error.message);
    }
  };
  token.addEventListener("change", listRuns);

  const poll = async () => {
    try {
      const run = await api(`/api/train/runs/${runId}`);
      render(run);
      if (["queued", "running"].includes(run.state)) {
        setTimeout(poll, POLL_MS);
      } else {
        listRuns();
      }
    } catch (error) {
      showError(error.message);
      setTimeout(poll, POLL_MS * 5);
    }
  };

  const follow = (id) => {
    runId = id;
    testLink.hidden = true;
    section.hidden = false;
    poll();
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    const data = new FormData(form);
    if (data.get("dataset") !== "upload") {
      data.delete("dataset_zip");
    }
    button.disabled = true;
    try {
      // The token travels in the form with its CSRF token (not as a header) on this request.
      const response = await fetch("/api/train/runs", { method: "POST", body: data });
      const body = await response.json();
      if (!response.ok) {
        showError(body.error || `The server answered ${response.status}.`);
        return;
      }
      render(body);
      follow(body.id);
      listRuns();
    } catch (error) {
      showError(`The server could not be reached (${error.message}).`);
    } finally {
      button.disabled = false;
    }
  });

  cancel.addEventListener("click", async () => {
    try {
      render(await api(`/api/train/runs/${runId}/cancel`, { method: "POST" }));
    } catch (error) {
      showError(error.message);
    }
  });
})();
