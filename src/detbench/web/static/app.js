// The upload page: sends the form to POST /api/detect and shows what it answers.
"use strict";

(() => {
  const form = document.getElementById("predict-form");
  const fileInput = document.getElementById("image");
  const bloodCells = document.getElementById("blood-cells");
  const cellSelect = document.getElementById("cell");
  const slider = document.getElementById("confidence");
  const sliderValue = document.getElementById("confidence-value");
  const button = document.getElementById("predict");
  const status = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const result = document.getElementById("result");
  const summary = document.getElementById("summary");
  const counts = document.getElementById("counts");
  const annotated = document.getElementById("annotated");
  const tableBody = document.querySelector("#detections tbody");

  const maxBytes = Number(form.dataset.maxUploadBytes);
  const bloodCellClasses = form.dataset.bloodCellClasses.split(",");
  const titles = { bccd: form.dataset.bccdTitle, coco: form.dataset.cocoTitle };

  const showError = (message) => {
    errorBox.textContent = message;
    errorBox.hidden = false;
    status.textContent = "";
  };

  // Cells that finished after the page loaded join the list when it is opened.
  const refreshCells = async () => {
    try {
      const response = await fetch("/api/models");
      const body = await response.json();
      const known = new Set(Array.from(cellSelect.options, (option) => option.value));
      body.models
        .filter((model) => !model.fixed && !known.has(model.id))
        .forEach((model) => {
          const score = model.map50 === null ? "not scored" : `mAP@0.5 ${model.map50.toFixed(3)}`;
          cellSelect.add(new Option(`${model.id}: ${model.dataset}, ${score}`, model.id));
        });
    } catch (ignored) {
      // The list on the page stays as it is.
    }
  };
  cellSelect.addEventListener("focus", refreshCells);

  slider.addEventListener("input", () => {
    const value = Number(slider.value);
    sliderValue.value = value < 0.01 ? value.toFixed(3) : value.toFixed(2);
  });

  // "RBC: 14, WBC: 1, Platelets: 0": every blood-cell class (a zero is a result too); for
  // common objects only the classes found.
  const countsText = (body) => {
    const names = body.model === "bccd" ? bloodCellClasses : Object.keys(body.counts);
    if (names.length === 0) {
      return "nothing found";
    }
    return names.map((name) => `${name}: ${body.counts[name] || 0}`).join(", ");
  };

  const cell = (row, text, numeric) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) {
      td.className = "num";
    }
    row.appendChild(td);
  };

  const render = (body) => {
    const n = body.detections.length;
    summary.textContent =
      `${titles[body.model] || body.model} (${body.architecture}): ` +
      `${n} detection${n === 1 ? "" : "s"} ` +
      `with score above ${body.confidence} in a ${body.width} x ${body.height} px image; ` +
      `inference ${body.inference_ms.toFixed(0)} ms.`;
    counts.textContent = countsText(body);
    annotated.src = body.annotated_image;
    tableBody.replaceChildren();
    body.detections.forEach((detection, index) => {
      const row = document.createElement("tr");
      cell(row, String(index + 1), true);
      cell(row, detection.class, false);
      cell(row, detection.score.toFixed(3), true);
      cell(row, detection.box.map((v) => v.toFixed(1)).join(", "), true);
      tableBody.appendChild(row);
    });
    result.hidden = false;
    status.textContent = "";
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    const file = fileInput.files[0];
    if (!file) {
      showError("Choose an image file first.");
      return;
    }
    if (file.size > maxBytes) {
      showError(`The file is ${(file.size / 1048576).toFixed(1)} MiB; at most ` +
        `${form.dataset.maxUploadMb} MiB can be uploaded.`);
      return;
    }
    const data = new FormData();
    data.append("image", file);
    data.append("model", cellSelect.value || (bloodCells.checked ? "bccd" : "coco"));
    data.append("confidence", slider.value);
    data.append("annotate", "1");

    result.hidden = true;
    button.disabled = true;
    status.textContent = "Detecting...";
    try {
      const response = await fetch("/api/detect", { method: "POST", body: data });
      let body = null;
      try {
        body = await response.json();
      } catch (ignored) {
        body = null;
      }
      if (!response.ok || body === null) {
        showError(body && body.error ? body.error : `The server answered ${response.status}.`);
        return;
      }
      render(body);
    } catch (error) {
      showError(`The server could not be reached (${error.message}).`);
    } finally {
      button.disabled = false;
    }
  });
})();
