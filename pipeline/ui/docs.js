// A small renderer of /openapi.json: every operation with its parameters, request body and
// responses, then every schema. Text goes in through textContent only (nothing is parsed as HTML).
"use strict";

(function () {
  const METHODS = ["get", "head", "post", "put", "patch", "delete"];

  function el(tag, ...children) {
    const node = document.createElement(tag);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // `code` spans of a description become <code>; the rest stays text.
  function prose(text) {
    const p = el("p");
    String(text || "").split("`").forEach((part, i) => p.append(i % 2 ? el("code", part) : part));
    return p;
  }

  function refName(ref) {
    return ref.split("/").pop();
  }

  function schemaLink(name) {
    const a = el("a", name);
    a.href = "#schema-" + name;
    return a;
  }

  function typeOf(schema) {
    if (!schema) return "";
    if (schema.$ref) return refName(schema.$ref);
    if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    let type = [].concat(schema.type || "any").join(" | ");
    if (schema.type === "array") type = typeOf(schema.items) + "[]";
    if (schema.type === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object") {
      type = "{string: " + typeOf(schema.additionalProperties) + "}";
    }
    const limits = [];
    if (schema.maxLength !== undefined) limits.push("at most " + schema.maxLength + " chars");
    if (schema.minimum !== undefined) limits.push(">= " + schema.minimum);
    if (schema.pattern) limits.push(schema.pattern);
    return limits.length ? type + " (" + limits.join(", ") + ")" : type;
  }

  function typeCell(schema) {
    const td = el("td");
    if (schema && schema.$ref) td.append(schemaLink(refName(schema.$ref)));
    else td.append(el("code", typeOf(schema)));
    return td;
  }

  function table(headings, rows) {
    const head = el("tr", ...headings.map((h) => el("th", h)));
    return el("table", el("thead", head), el("tbody", ...rows));
  }

  function properties(schema) {
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties || {}).map(([name, prop]) =>
      el(
        "tr",
        el("td", el("code", name), required.has(name) ? " (required)" : null),
        typeCell(prop),
        el("td", "default" in prop ? el("code", JSON.stringify(prop.default)) : ""),
        el("td", prose(prop.description)),
      ),
    );
    return table(["field", "type", "default", "meaning"], rows);
  }

  function operation(path, method, op, securitySchemes) {
    const section = el("section", el("h3", el("span", method), el("code", path)));
    section.className = "op";
    section.firstChild.firstChild.className = "method";
    section.id = "op-" + (op.operationId || method + path);
    if (op.summary) section.append(prose(op.summary));
    if (op.description) section.append(prose(op.description));
    if (op.security && op.security.length) {
      const schemes = op.security.flatMap((s) => Object.keys(s)).map((k) => "`" + securitySchemes[k].name + "`");
      section.append(prose("Authentication: the " + schemes.join(" or ") + " header."));
    }
    if (op.parameters && op.parameters.length) {
      section.append(el("h4", "Parameters"));
      const rows = op.parameters.map((p) =>
        el("tr", el("td", el("code", p.name)), el("td", p.in), typeCell(p.schema), el("td", prose(p.description))),
      );
      section.append(table(["name", "in", "type", "meaning"], rows));
    }
    if (op.requestBody) {
      section.append(el("h4", "Request body"));
      for (const [media, content] of Object.entries(op.requestBody.content)) {
        section.append(el("p", el("code", media), " ", content.schema.$ref ? schemaLink(refName(content.schema.$ref)) : ""));
      }
    }
    section.append(el("h4", "Responses"));
    const rows = Object.entries(op.responses).map(([status, response]) => {
      const body = el("td");
      for (const [media, content] of Object.entries(response.content || {})) {
        body.append(el("code", media), " ");
        if (content.schema && content.schema.$ref) body.append(schemaLink(refName(content.schema.$ref)));
      }
      const headers = Object.keys(response.headers || {}).map((h) => el("code", h));
      const headerCell = el("td");
      headers.forEach((h, i) => headerCell.append(i ? ", " : "", h));
      return el("tr", el("td", el("strong", status)), el("td", prose(response.description)), body, headerCell);
    });
    section.append(table(["status", "meaning", "body", "headers"], rows));
    return section;
  }

  function render(doc) {
    const main = document.getElementById("reference");
    main.replaceChildren();
    document.getElementById("title").textContent = doc.info.title + " API " + doc.info.version;
    main.append(prose(doc.info.description));
    main.append(el("h2", "Operations"));
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const method of METHODS) {
        if (item[method]) main.append(operation(path, method, item[method], doc.components.securitySchemes));
      }
    }
    main.append(el("h2", "Schemas"));
    for (const [name, schema] of Object.entries(doc.components.schemas)) {
      const section = el("section", el("h3", name), prose(schema.description));
      section.className = "op";
      section.id = "schema-" + name;
      section.append(properties(schema));
      main.append(section);
    }
  }

  fetch("/openapi.json")
    .then((r) => r.json())
    .then(render)
    .catch((err) => {
      document.getElementById("reference").replaceChildren(el("p", "Could not load /openapi.json: " + err.message));
    });
})();
