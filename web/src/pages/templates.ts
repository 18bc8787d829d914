// #/templates: the templates and their download links (S43), upload with a progress bar
// (S60), register by path, delete.
import { OsType, type Template } from "../../../sdk/typescript/src/index";
import { API_BASE, api, attempt, failure, isAdmin, onPage, state } from "../app";
import { confirmDialog, field, fmtBytes, fmtTime, h, replace, table } from "../dom";
import { sha256File } from "../sha256";
import * as v from "../validate";

export async function renderTemplates(root: HTMLElement): Promise<void> {
  const body = h("tbody");
  const load = async () => {
    const list = await api().res.templateList();
    replace(body, list.length ? list.map((t) => row(t)) : h("tr", null, h("td", { colspan: 8 }, "No templates.")));
  };
  const row = (t: Template) => {
    const del = h("button", { type: "button", class: "danger small delete-template" }, "Delete");
    del.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete template ${t.name}?`, "Delete"))) return;
      const ok = await attempt(() => api().res.templateDelete({ id: t.id }));
      if (ok !== undefined) await attempt(load);
    });
    // The image streams from the API with the session cookie: a plain link works.
    const href = t.downloadUrl || `${API_BASE}/templates/${encodeURIComponent(t.name)}/image`;
    const description = t.description ?? "";
    return h(
      "tr",
      { dataset: { templateId: t.id, template: t.name } },
      h("td", null, h("strong", null, t.name), description ? h("div", { class: "description" }, description) : null),
      h("td", null, t.osType),
      h("td", null, t.osInitProfile),
      h("td", null, `${t.minMemoryMib} MiB`),
      h("td", null, t.sizeBytes !== undefined ? fmtBytes(t.sizeBytes) : ""),
      h("td", null, t._public ? "public" : "private"),
      h("td", null, h("a", { href, class: "download", download: `${t.name}.img` }, "Download"), t.sha256 ? h("div", { class: "muted" }, h("code", null, `sha256 ${t.sha256.slice(0, 16)}…`)) : null),
      h("td", null, fmtTime(t.createdAt), " ", del),
    );
  };

  // ---- upload (S60) ----
  const upName = h("input", { id: "upload-name", type: "text" });
  const upOs = h("select", { id: "upload-os" }, Object.values(OsType).map((o) => h("option", { value: o }, o)));
  const upMin = h("input", { id: "upload-min-memory", type: "number", min: 1, value: 64 });
  const upFile = h("input", { id: "upload-file", type: "file", accept: ".qcow2,.img,.raw,application/octet-stream" });
  const hashBar = h("progress", { id: "upload-hash-progress", max: 100, value: 0, "aria-label": "checksum progress" });
  const upBar = h("progress", { id: "upload-progress", max: 100, value: 0, "aria-label": "upload progress" });
  const upStatus = h("span", { id: "upload-status", role: "status" });
  const upErr = h("p", { id: "upload-error", class: "form-error", role: "alert" });
  const upForm = h(
    "form",
    { id: "upload-form", class: "card", novalidate: true },
    h("h2", null, "Upload an image"),
    field("Name", upName),
    field("OS", upOs),
    field("Minimum memory (MiB)", upMin),
    field("Image file (qcow2 or raw)", upFile),
    h("div", { class: "op" }, h("span", null, "checksum"), hashBar, h("span", null, "upload"), upBar, upStatus),
    upErr,
    h("button", { type: "submit", id: "upload-submit" }, "Upload"),
  );
  upForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    upErr.textContent = "";
    const file = upFile.files?.[0];
    const ok = [
      v.mark(upForm, "upload-name", upName.value.trim() ? (upName.value.length > 64 ? "At most 64 characters." : null) : "Enter a name."),
      v.mark(upForm, "upload-min-memory", v.intIn(upMin.value, 1, 1048576, "memory in MiB")),
      v.mark(upForm, "upload-file", file ? (file.size ? null : "The file is empty.") : "Choose a file."),
    ].every((x) => x);
    if (!ok || !file) return;
    const submit = upForm.querySelector("button[type=submit]") as HTMLButtonElement;
    submit.disabled = true;
    try {
      upStatus.textContent = "computing checksum";
      const sha = await sha256File(file, (f) => (hashBar.value = f * 100));
      upStatus.textContent = "uploading";
      await upload(upName.value.trim(), upOs.value, Number(upMin.value), sha, file, (f) => (upBar.value = f * 100));
      upStatus.textContent = "uploaded";
      upBar.value = 100;
      await attempt(load);
    } catch (err) {
      upStatus.textContent = "failed";
      upErr.textContent = (await failure(err)).message;
    } finally {
      submit.disabled = false;
    }
  });
  // The server's own progress (checking, inspecting) after the bytes arrive.
  onPage(["template.upload"], (ev) => {
    if (ev.subject !== upName.value.trim()) return;
    const d = (ev.data ?? {}) as { stage?: string; percent?: number };
    if (d.stage && upStatus.textContent !== "uploaded") upStatus.textContent = `server: ${d.stage}${typeof d.percent === "number" ? ` ${Math.round(d.percent)}%` : ""}`;
  });

  // ---- register by path (administrators) ----
  const section = h(
    "section",
    null,
    h("h1", null, "Templates"),
    h("p", { class: "muted" }, "Downloads: every template's image can be downloaded from its link."),
    table("templates-table", ["Template", "OS", "OS-init profile", "Min memory", "Size", "Visibility", "Download", "Created"], body),
    upForm,
  );
  if (isAdmin()) section.append(registerForm(() => void attempt(load)));
  replace(root, section);
  await load();
}

function registerForm(done: () => void): HTMLElement {
  const name = h("input", { id: "template-name", type: "text" });
  const path = h("input", { id: "template-path", type: "text", placeholder: "/var/lib/corral/images/debian.qcow2" });
  const os = h("select", { id: "template-os" }, Object.values(OsType).map((o) => h("option", { value: o }, o)));
  const min = h("input", { id: "template-min-memory", type: "number", min: 1, value: 64 });
  const profile = h("input", { id: "template-profile", type: "text", placeholder: "default for the OS" });
  const pub = h("input", { id: "template-public", type: "checkbox", checked: true });
  const err = h("p", { id: "template-error", class: "form-error", role: "alert" });
  const form = h(
    "form",
    { id: "template-form", class: "card", novalidate: true },
    h("h2", null, "Register an image already on the nodes"),
    field("Name", name),
    field("Path on the nodes", path),
    field("OS", os),
    field("Minimum memory (MiB)", min),
    field("OS-init profile (optional)", profile),
    h("p", null, h("label", null, pub, " Public")),
    err,
    h("button", { type: "submit", id: "template-create" }, "Register"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    const ok = [
      v.mark(form, "template-name", name.value.trim() ? null : "Enter a name."),
      v.mark(form, "template-path", path.value.startsWith("/") ? null : "Enter an absolute path."),
      v.mark(form, "template-min-memory", v.intIn(min.value, 1, 1048576, "memory in MiB")),
    ].every((x) => x);
    if (!ok) return;
    try {
      await api().res.templateCreate({
        createTemplate: { name: name.value.trim(), path: path.value.trim(), osType: os.value as OsType, minMemoryMib: Number(min.value), osInitProfile: profile.value.trim() || undefined, _public: pub.checked },
      });
      form.reset();
      done();
    } catch (e2) {
      err.textContent = (await failure(e2)).message;
    }
  });
  return form;
}

/**
 * PUT /api/v1/templates/{name}/image with XMLHttpRequest rather than the SDK's
 * `templateUpload`: fetch reports no upload progress, and the progress bar needs it.
 */
function upload(name: string, os: string, minMemoryMib: number, sha256: string, file: Blob, progress: (f: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const q = new URLSearchParams({ os_type: os, sha256, min_memory_mib: String(minMemoryMib) });
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `${API_BASE}/templates/${encodeURIComponent(name)}/image?${q}`);
    xhr.withCredentials = true;
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-CSRF-Token", state.user?.csrf ?? "");
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && progress(e.loaded / e.total));
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else {
        let message = `${xhr.status} ${xhr.statusText}`;
        try {
          message = JSON.parse(xhr.responseText).message ?? message;
        } catch {
          /* not JSON */
        }
        reject(new Error(message));
      }
    });
    xhr.addEventListener("error", () => reject(new Error("The upload failed (network error).")));
    xhr.addEventListener("abort", () => reject(new Error("The upload was aborted.")));
    xhr.send(file);
  });
}
