// The imgcls page: upload or draw images, show top-k, Grad-CAM and feature maps, and the
// serving version's training report. Plain JavaScript, same-origin requests only.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);

  const state = {
    model: null, // metadata of the chosen version, from GET /models
    models: [], // every model of the repository, from GET /models
    choice: { name: null, version: null, label: null }, // what the pickers say
    explainable: false, // whether it publishes the gradcam endpoint
    queue: Promise.resolve(), // requests run one after another (explanations are rate-limited)
  };

  const MAX_RETRIES = 3;
  const REPORT_FIGURES = [
    ["curves.png", "Loss and accuracy per epoch, training and validation"],
    ["confusion_matrix.png", "Confusion matrix on the held-out test split"],
    ["filters.png", "First-layer filters: what the first convolutions look for"],
  ];

  // ------------------------------------------------------------------ helpers

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function percent(score) {
    return `${(score * 100).toFixed(score >= 0.995 || score < 0.001 ? 1 : 2)}%`;
  }

  function showError(message) {
    const box = $("#errors");
    box.textContent = message;
    box.hidden = !message;
  }

  function headers() {
    const key = $("#api-key").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  function topK() {
    const value = Number.parseInt($("#top-k").value, 10);
    return Number.isFinite(value) && value > 0 ? value : 3;
  }

  // The service answers errors as {"detail": "..."}; show exactly that.
  async function errorText(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      detail = response.statusText;
    }
    return `${response.status}: ${detail}`;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // POST a form with one or more files; retries a 503 after its Retry-After delay.
  async function postImages(path, files) {
    for (let attempt = 0; ; attempt++) {
      const form = new FormData();
      for (const file of files) form.append("file", file, file.name);
      const started = performance.now();
      const response = await fetch(path, { method: "POST", body: form, headers: headers() });
      const latencyMs = performance.now() - started;
      if (response.status === 503 && attempt < MAX_RETRIES) {
        const retryS = Number.parseFloat(response.headers.get("Retry-After") || "1");
        await sleep(Math.min(Math.max(retryS, 0.2), 10) * 1000);
        continue;
      }
      if (!response.ok) throw new Error(await errorText(response));
      return { body: await response.json(), latencyMs };
    }
  }

  // ------------------------------------------------------------ model information

  // The model routes for the current choice: "/models/{name}[/versions/{v}|/labels/{l}]".
  function modelPath() {
    const { name, version, label } = state.choice;
    let path = `/models/${encodeURIComponent(name)}`;
    if (version !== null) path += `/versions/${version}`;
    else if (label !== null) path += `/labels/${encodeURIComponent(label)}`;
    return path;
  }

  // /explain takes the same choice as query parameters.
  function explainQuery() {
    const { name, version, label } = state.choice;
    let query = `model=${encodeURIComponent(name)}`;
    if (version !== null) query += `&version=${version}`;
    else if (label !== null) query += `&version_label=${encodeURIComponent(label)}`;
    return query;
  }

  function chosenModel() {
    return state.models.find((m) => m.name === state.choice.name) || null;
  }

  // Metadata of the version the choice resolves to (for a label or the default: its version).
  function chosenMetadata(model) {
    const { version, label } = state.choice;
    let wanted = model.default_version;
    if (version !== null) wanted = version;
    else if (label !== null && model.labels[label]) wanted = model.labels[label].version;
    return (model.served || []).find((m) => m.version === wanted) || model.serving;
  }

  function fillVersionSelect(model) {
    const select = $("#version-select");
    select.replaceChildren(el("option", {
      value: "",
      text: model.default_version === null ? "default (none served)" : `default (version ${model.default_version})`,
    }));
    for (const served of model.served || []) {
      select.append(el("option", { value: `v:${served.version}`, text: `version ${served.version}` }));
    }
    for (const [label, target] of Object.entries(model.labels || {})) {
      if (!target.served) continue;
      const share = target.weight > 0 ? `, ${Math.round(target.weight * 100)}% of default traffic` : "";
      select.append(el("option", { value: `l:${label}`, text: `${label} → version ${target.version}${share}` }));
    }
  }

  function applyChoice() {
    const info = $("#model-info");
    const model = chosenModel();
    state.model = model ? chosenMetadata(model) : null;
    if (!state.model) {
      const name = state.choice.name || "the default model";
      info.textContent = `No ${name} version is serving yet: publish one with ` +
        `python training/train.py --model-name ${name}, then reload this page.`;
      state.explainable = false;
      return;
    }
    const meta = state.model;
    state.explainable = (meta.endpoints || []).includes("gradcam");
    const accuracy = meta.metrics && meta.metrics.test_accuracy;
    const parts = [
      `Model ${meta.name}, version ${meta.version}`,
      `${meta.arch}, input ${meta.input.height}×${meta.input.width}×${meta.input.channels}`,
      accuracy === undefined ? "no test accuracy recorded" : `test accuracy ${percent(accuracy)}`,
    ];
    if (!state.explainable) parts.push("published without explanations (retrain to get them)");
    info.textContent = parts.join(" · ");
    info.dataset.version = String(meta.version);
    info.dataset.model = meta.name;
    loadReport(meta.name, meta.version);
  }

  async function loadModel() {
    const info = $("#model-info");
    try {
      const response = await fetch("/models");
      if (!response.ok) throw new Error(await errorText(response));
      const data = await response.json();
      state.models = data.models || [];
      state.choice = { name: data.default_model || data.name, version: null, label: null };
      const modelSelect = $("#model-select");
      modelSelect.replaceChildren(...state.models.map((m) => el("option", {
        value: m.name,
        text: m.name === state.choice.name ? `${m.name} (default)` : m.name,
      })));
      modelSelect.value = state.choice.name;
      const model = chosenModel();
      if (model) fillVersionSelect(model);
      applyChoice();
    } catch (error) {
      info.textContent = `Could not read /models: ${error.message}`;
    }
  }

  function setUpModelPicker() {
    $("#model-select").addEventListener("change", (event) => {
      state.choice = { name: event.target.value, version: null, label: null };
      const model = chosenModel();
      if (model) fillVersionSelect(model);
      applyChoice();
    });
    $("#version-select").addEventListener("change", (event) => {
      const value = event.target.value;
      state.choice = {
        name: state.choice.name,
        version: value.startsWith("v:") ? Number.parseInt(value.slice(2), 10) : null,
        label: value.startsWith("l:") ? value.slice(2) : null,
      };
      applyChoice();
    });
  }

  // ----------------------------------------------------------------- training report

  async function loadReport(name, version) {
    const report = $("#report");
    report.replaceChildren();
    const base = `/models/${encodeURIComponent(name)}/versions/${version}/report/`;
    for (const [name, caption] of REPORT_FIGURES) {
      const img = el("img", { src: base + name, alt: caption, loading: "lazy" });
      const figure = el("figure", { className: "report-figure" }, [
        img,
        el("figcaption", { text: caption }),
      ]);
      img.addEventListener("error", () => {
        figure.replaceChildren(el("p", { className: "hint", text: `${name}: not in this report` }));
      });
      report.append(figure);
    }
    try {
      const response = await fetch(base + "per_class.json");
      if (!response.ok) throw new Error(await errorText(response));
      report.append(perClassTable(await response.json()));
    } catch (error) {
      report.append(el("p", { className: "hint", text: `Per-class metrics: ${error.message}` }));
    }
  }

  function perClassTable(perClass) {
    const table = el("table", { className: "per-class" });
    table.append(el("caption", { text: "Per-class metrics on the test split" }));
    const head = el("tr");
    for (const title of ["class", "precision", "recall", "F1", "support"]) {
      head.append(el("th", { scope: "col", text: title }));
    }
    table.append(el("thead", {}, [head]));
    const body = el("tbody");
    for (const [label, row] of Object.entries(perClass)) {
      if (!row || typeof row !== "object" || !("precision" in row)) continue;
      const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "");
      body.append(el("tr", {}, [
        el("th", { scope: "row", text: label }),
        el("td", { text: fmt(row.precision) }),
        el("td", { text: fmt(row.recall) }),
        el("td", { text: fmt(row["f1-score"] ?? row.f1) }),
        el("td", { text: typeof row.support === "number" ? String(Math.round(row.support)) : "" }),
      ]));
    }
    table.append(body);
    return el("div", { className: "table-wrap" }, [table]);
  }

  // ------------------------------------------------------------------------ results

  function newResultCard(file) {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    $(".result-title", card).textContent = file.name;
    $(".result-meta", card).textContent = "waiting for the model…";
    const input = $(".input-image", card);
    input.addEventListener("error", () => { $(".input-figure", card).hidden = true; });
    input.src = URL.createObjectURL(file);
    input.alt = `The uploaded image ${file.name}`;
    $("#results").prepend(card);
    $("#results-empty").hidden = true;
    return card;
  }

  function renderBars(card, predictions) {
    const list = $(".bars", card);
    list.replaceChildren();
    predictions.forEach((p, index) => {
      const bar = el("span", { className: "bar", "aria-hidden": "true" });
      bar.style.setProperty("--score", String(Math.max(p.score, 0.004)));
      list.append(el("li", { className: index === 0 ? "top" : "" }, [
        el("span", { className: index === 0 ? "label top-label" : "label", text: p.label }),
        el("span", { className: "track", "aria-hidden": "true" }, [bar]),
        el("span", { className: "score", text: percent(p.score) }),
      ]));
    });
  }

  function renderFeatureMaps(card, layers) {
    const holder = $(".feature-maps", card);
    holder.replaceChildren();
    for (const layer of layers) {
      const shown = layer.tiles.length;
      const summary = el("summary", {
        text: `Feature maps of ${layer.layer}: ${shown} of ${layer.channels} channels, ` +
          `${layer.height}×${layer.width}`,
      });
      const grid = el("div", { className: "tiles" });
      for (const tile of layer.tiles) {
        grid.append(el("img", {
          className: "tile",
          src: `data:image/png;base64,${tile.png}`,
          alt: `${layer.layer} channel ${tile.channel}, peak activation ${tile.max}`,
          title: `${layer.layer}[${tile.channel}] max ${tile.max}`,
        }));
      }
      const details = el("details", { className: "layer" }, [summary, grid]);
      if (layer === layers[0]) details.open = true;
      holder.append(details);
    }
  }

  // "Wrong? The right answer is [ ]": the image and its true class go to
  // POST /models/{name}/feedback (classified again, counted for live accuracy, stored for the
  // next training).
  function offerFeedback(card, file, predicted) {
    const form = $(".feedback", card);
    const select = $(".feedback-label", card);
    if (select.options.length === 0) {
      for (const name of state.model.class_names) select.append(el("option", { value: name, text: name }));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        enqueue(() => sendFeedback(card, file, select.value));
      });
    }
    select.value = predicted;
    form.hidden = false;
  }

  async function sendFeedback(card, file, label) {
    const status = $(".feedback-status", card);
    const button = $(".feedback-send", card);
    button.disabled = true;
    status.textContent = "sending…";
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("label", label);
      const path = `/models/${encodeURIComponent(state.choice.name)}/feedback`;
      const response = await fetch(path, { method: "POST", body: form, headers: headers() });
      if (!response.ok) throw new Error(await errorText(response));
      const result = (await response.json()).results[0];
      status.textContent = `Thanks: stored as “${result.label}” (version ${result.version} ` +
        `answered “${result.predicted}”: ${result.outcome}).`;
      card.dataset.feedback = result.outcome;
    } catch (err) {
      status.textContent = err.message;
      card.dataset.feedback = "error";
    } finally {
      button.disabled = false;
    }
  }

  function renderExplanation(card, body, latencyMs) {
    renderBars(card, body.predictions);
    $(".gradcam-figure", card).hidden = false;
    const heat = $(".gradcam", card);
    heat.src = `data:image/png;base64,${body.gradcam.overlay_png}`;
    heat.alt = `Grad-CAM heatmap for class ${body.explained.label} over the image: ` +
      "bright, warm areas mattered most";
    $(".gradcam-caption", card).textContent =
      `Where the network looked for “${body.explained.label}” ` +
      `(${percent(body.explained.score)}); Grad-CAM at the last convolution layer, ` +
      `${body.gradcam.height}×${body.gradcam.width}, laid over the image you sent`;
    const seen = $(".network-input-figure", card);
    seen.hidden = !body.gradcam.network_input_png;
    if (body.gradcam.network_input_png) {
      const img = $(".network-input", card);
      img.src = `data:image/png;base64,${body.gradcam.network_input_png}`;
      img.alt = "The normalised picture the network classified";
    }
    renderFeatureMaps(card, body.feature_maps || []);
    $(".result-meta", card).textContent =
      `version ${body.model.version} · ${Math.round(latencyMs)} ms round trip ` +
      `(server ${Math.round(body.duration_s * 1000)} ms)`;
    card.dataset.label = body.predictions[0].label;
    card.dataset.state = "done";
  }

  function fillLabelSelect(card, file, explained) {
    const select = $(".label-select", card);
    if (select.options.length === 0) {
      for (const name of state.model.class_names) select.append(el("option", { value: name, text: name }));
      select.addEventListener("change", () => {
        enqueue(() => explainFile(card, file, select.value));
      });
    }
    select.value = explained;
  }

  async function explainFile(card, file, label) {
    const error = $(".result-error", card);
    error.textContent = "";
    card.dataset.state = "busy";
    card.setAttribute("aria-busy", "true");
    try {
      let path = `/explain?top_k=${topK()}&${explainQuery()}`;
      if (label !== undefined) path += `&label=${encodeURIComponent(label)}`;
      const { body, latencyMs } = await postImages(path, [file]);
      renderExplanation(card, body, latencyMs);
      fillLabelSelect(card, file, body.explained.label);
      offerFeedback(card, file, body.predictions[0].label);
    } catch (err) {
      error.textContent = err.message;
      $(".result-meta", card).textContent = "";
      card.dataset.state = "error";
    } finally {
      card.removeAttribute("aria-busy");
    }
  }

  // A version without explanation endpoints: one batched /predict call for every image.
  async function predictFiles(files, cards) {
    try {
      const { body, latencyMs } = await postImages(`${modelPath()}/predict?top_k=${topK()}`, files);
      body.results.forEach((result, i) => {
        const card = cards[i];
        renderBars(card, result.predictions);
        $(".result-meta", card).textContent =
          `version ${body.model.version} · ${Math.round(latencyMs)} ms round trip ` +
          "(no explanations: this version was published without them)";
        card.dataset.label = result.predictions[0].label;
        card.dataset.state = "done";
        offerFeedback(card, files[i], result.predictions[0].label);
      });
    } catch (err) {
      for (const card of cards) {
        $(".result-error", card).textContent = err.message;
        $(".result-meta", card).textContent = "";
        card.dataset.state = "error";
      }
    }
  }

  function enqueue(task) {
    state.queue = state.queue.then(task, task);
    return state.queue;
  }

  function handleFiles(fileList) {
    const files = Array.from(fileList || []);
    if (files.length === 0) return;
    showError("");
    if (!state.model) {
      showError("No model is serving yet; see the line at the top of the page.");
      return;
    }
    const cards = files.map(newResultCard);
    if (state.explainable) {
      files.forEach((file, i) => enqueue(() => explainFile(cards[i], file)));
    } else {
      enqueue(() => predictFiles(files, cards));
    }
  }

  // ------------------------------------------------------------------ drawing canvas

  function setUpCanvas() {
    const canvas = $("#canvas");
    const ctx = canvas.getContext("2d");
    const STEP = 10; // keyboard pen step, canvas pixels
    const cursor = { x: canvas.width / 2, y: canvas.height / 2 };
    let drawing = false;
    let drawn = false;
    // "chalk": light ink on black, like the training data; "paper": dark ink on white. The
    // model normalises polarity itself, so both classify alike.
    let ink = "chalk";
    const COLORS = { chalk: ["#000", "#fff"], paper: ["#fff", "#111"] };

    function clear() {
      ctx.fillStyle = COLORS[ink][0];
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      Object.assign(cursor, { x: canvas.width / 2, y: canvas.height / 2 });
      drawn = false;
      canvas.dataset.ink = ink;
    }
    function pen() {
      ctx.strokeStyle = COLORS[ink][1];
      ctx.lineWidth = 26; // about the stroke width of the training digits after downscaling
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
    }
    function point(event) {
      const rect = canvas.getBoundingClientRect();
      return {
        x: ((event.clientX - rect.left) * canvas.width) / rect.width,
        y: ((event.clientY - rect.top) * canvas.height) / rect.height,
      };
    }
    function line(from, to) {
      pen();
      ctx.beginPath();
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
      drawn = true;
    }

    const checked = document.querySelector('input[name="ink"]:checked');
    if (checked && checked.value === "paper") ink = "paper"; // the browser may restore it
    clear();
    canvas.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      drawing = true;
      const p = point(event);
      line(p, p);
      Object.assign(cursor, p);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drawing) return;
      const p = point(event);
      line(cursor, p);
      Object.assign(cursor, p);
    });
    const stop = () => { drawing = false; };
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);

    canvas.addEventListener("keydown", (event) => {
      const moves = { ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0] };
      const move = moves[event.key];
      if (!move) {
        if (event.key === "Enter") $("#classify-drawing").click();
        return;
      }
      event.preventDefault();
      const next = {
        x: Math.min(canvas.width, Math.max(0, cursor.x + move[0] * STEP)),
        y: Math.min(canvas.height, Math.max(0, cursor.y + move[1] * STEP)),
      };
      if (!event.shiftKey) line(cursor, next);
      Object.assign(cursor, next);
    });

    for (const radio of document.querySelectorAll('input[name="ink"]')) {
      radio.addEventListener("change", () => {
        if (!radio.checked) return;
        ink = radio.value === "paper" ? "paper" : "chalk";
        clear(); // a new sheet in the chosen colours
      });
    }

    $("#clear-drawing").addEventListener("click", () => {
      clear();
      canvas.focus();
    });
    $("#classify-drawing").addEventListener("click", () => {
      if (!drawn) {
        showError("The canvas is empty: draw a digit first.");
        return;
      }
      canvas.toBlob((blob) => {
        handleFiles([new File([blob], "drawing.png", { type: "image/png" })]);
      }, "image/png");
    });
  }

  // ------------------------------------------------------------------------- wiring

  function setUpUploads() {
    const input = $("#file-input");
    input.addEventListener("change", () => {
      handleFiles(input.files);
      input.value = ""; // picking the same file again still triggers a change
    });
    const zone = $("#drop-zone");
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      handleFiles(event.dataTransfer.files);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    showError("");
    setUpUploads();
    setUpModelPicker();
    setUpCanvas();
    loadModel();
  });
})();
