// The demo page: send a photo to POST /product/cutout and show the answer.
// The token lives in the form field only: nothing is written to storage or cookies.
// The options are the boolean fields of the request schema in /openapi.json.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let picked = null; // the dropped or chosen file: a promise of its data: URL
  let objectUrl = null;

  function showError(code, message) {
    $("error-code").textContent = code;
    $("error-message").textContent = message;
    $("error").hidden = false;
  }

  function clearResult() {
    $("error").hidden = true;
    $("crop").hidden = true;
    $("result").removeAttribute("src");
    $("result-info").textContent = "";
    $("download").hidden = true;
  }

  function showInput(src) {
    if (src) {
      $("input").src = src;
    } else {
      $("input").removeAttribute("src");
    }
  }

  async function loadOptions() {
    const fieldset = $("options");
    try {
      const doc = await (await fetch("/openapi.json")).json();
      const props = doc.components.schemas.CutoutRequest.properties;
      for (const [name, prop] of Object.entries(props)) {
        const types = [].concat(prop.type || []);
        if (!types.includes("boolean")) continue;
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.id = "opt-" + name;
        box.dataset.field = name;
        box.checked = prop.default === true;
        const hint = document.createElement("small");
        hint.textContent = prop.description || "";
        label.append(box, " " + name, hint);
        fieldset.append(label);
      }
    } catch (err) {
      fieldset.append("Could not load the options from /openapi.json.");
    }
  }

  function pick(file) {
    if (!file) return;
    clearResult();
    $("image_url").value = "";
    $("drop-text").textContent = file.name;
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    showInput(objectUrl);
    picked = new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function drawCrop(crop, source) {
    const box = $("crop");
    box.style.left = (100 * crop.left) / source.width + "%";
    box.style.top = (100 * crop.top) / source.height + "%";
    box.style.width = (100 * crop.width) / source.width + "%";
    box.style.height = (100 * crop.height) / source.height + "%";
    box.hidden = false;
  }

  async function submit(event) {
    event.preventDefault();
    clearResult();
    const url = $("image_url").value.trim();
    const body = {};
    if (url) {
      body.image_url = url;
      showInput(url);
    } else if (picked) {
      body.file = await picked;
    } else {
      showError("", "Drop a photo or give an image URL first.");
      return;
    }
    const sku = $("sku").value.trim();
    if (sku) body.sku = sku;
    for (const box of document.querySelectorAll("#options input[type=checkbox]")) {
      body[box.dataset.field] = box.checked;
    }
    $("submit").disabled = true;
    $("status").textContent = "Working...";
    let response;
    let answer;
    try {
      response = await fetch("/product/cutout", {
        method: "POST",
        headers: { "api_token": $("token").value.trim(), "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      answer = await response.json();
    } catch (err) {
      $("status").textContent = "";
      $("submit").disabled = false;
      showError("", "No answer from the service: " + err.message);
      return;
    }
    $("submit").disabled = false;
    $("status").textContent = "";
    if (!response.ok) {
      const error = answer.error || {};
      const retry = response.headers.get("Retry-After");
      showError(response.status + " " + (error.reason || ""), error.message || "");
      if (retry) $("status").textContent = "Retry after " + retry + " s.";
      return;
    }
    const result = $("result");
    result.onload = () => {
      const info = $("result-info");
      info.textContent =
        result.naturalWidth + " x " + result.naturalHeight + " px, cut from " +
        answer.source.width + " x " + answer.source.height + " at (" + answer.crop.left + ", " + answer.crop.top + ")";
      info.dataset.width = String(result.naturalWidth);
      info.dataset.height = String(result.naturalHeight);
    };
    result.onerror = () => showError("", "The result image could not be loaded (has its URL expired?).");
    result.src = answer.result_url;
    result.dataset.cropWidth = String(answer.crop.width);
    result.dataset.cropHeight = String(answer.crop.height);
    drawCrop(answer.crop, answer.source);
    const link = $("download");
    link.href = answer.result_url;
    link.download = (answer.sku || "cutout").replace(/[^A-Za-z0-9._-]+/g, "_") + ".png";
    link.hidden = false;
  }

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  $("image_url").addEventListener("change", () => {
    clearResult();
    picked = null;
    showInput($("image_url").value.trim());
  });
  $("form").addEventListener("submit", submit);
  loadOptions();
})();
