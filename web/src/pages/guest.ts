// #/guests/<id>: one guest: live state, actions, disks, snapshots, resize, operations,
// boot jobs, domain XML, metric charts and the console (noVNC).
import type { Guest, GuestAction, Operation } from "../../../sdk/typescript/src/index";
import { api, attempt, failure, onLeave, onPage, showError } from "../app";
import { charts, rangeSelect } from "../charts";
import { openConsole, type ConsoleHandle } from "../console";
import { confirmDialog, field, fmtMib, fmtTime, h, replace, table } from "../dom";
import { opProgress, TERMINAL } from "../progress";
import * as v from "../validate";

export async function renderGuest(root: HTMLElement, id: string): Promise<void> {
  let g: Guest;
  try {
    g = await api().guests.guestGet({ id });
  } catch (e) {
    const f = await failure(e);
    if (f.status === 404 || f.status === 403) {
      replace(root, h("section", { id: "not-found" }, h("h1", null, "Guest not found"), h("p", null, "not found: no such guest, or it is not yours.")));
      return;
    }
    throw e;
  }

  const stateEl = h("span", { id: "guest-state", class: "state", dataset: { state: g.state } }, g.state);
  const reasonEl = h("span", { id: "guest-state-reason", class: "muted" }, g.stateReason ?? "");
  const actionProgress = h("div", { id: "action-progress", "aria-live": "polite" });
  const facts = h("dl", { class: "facts", id: "guest-facts" });
  const fillFacts = () =>
    replace(
      facts,
      [
        ["Id", g.id],
        ["Hostname", g.hostname],
        ["IP", g.ip ?? ""],
        ["MAC", g.mac ?? ""],
        ["Node", g.nodeId ? h("a", { href: `#/nodes/${encodeURIComponent(g.nodeId)}`, id: "guest-node" }, g.nodeId) : ""],
        ["vCPUs", `${g.cpus} (up to ${g.maxCpus} live)`],
        ["Memory", `${fmtMib(g.memoryMib)} (up to ${fmtMib(g.maxMemoryMib)} live)`],
        ["OS", g.osType],
        ["Template", g.templateId],
        ["Pool", g.poolId ?? ""],
        ["HA", g.ha ? "yes" : "no"],
        ["Tags", g.tags.map((t) => h("span", { class: "tag" }, t))],
        ["Created", fmtTime(g.createdAt)],
        ["Updated", fmtTime(g.updatedAt)],
      ].map(([k, val]) => [h("dt", null, k as string), h("dd", null, val as string)]),
    );
  fillFacts();
  const refresh = async () => {
    try {
      g = await api().guests.guestGet({ id });
      setState(g.state);
      reasonEl.textContent = g.stateReason ?? "";
      fillFacts();
      fillDisks();
    } catch {
      /* shown on the next action */
    }
  };
  const setState = (s: string) => {
    stateEl.textContent = s;
    stateEl.dataset.state = s;
  };

  // ---- actions ----
  const act = (idName: string, label: string, action: GuestAction | "delete", cls = "secondary") => {
    const b = h("button", { type: "button", id: `action-${idName}`, class: cls }, label);
    b.addEventListener("click", async () => {
      if (action === "delete") {
        if (!(await confirmDialog(`Delete guest ${g.name} and its disks? This cannot be undone.`, "Delete", "delete-dialog"))) return;
      }
      b.disabled = true;
      try {
        const acc = action === "delete" ? await api().guests.guestDelete({ id }) : await api().guests.guestAction({ id, action });
        actionProgress.prepend(
          opProgress(acc.operationId, `${label} ${g.name}`, (st) => {
            if (action === "delete" && st === "succeeded") location.hash = "#/guests";
            void refresh();
            void loadOps();
          }).el,
        );
        void loadOps();
      } catch (e) {
        await showError(e);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  };
  const actions = h(
    "div",
    { class: "toolbar", id: "guest-actions" },
    act("start", "Start", "start"),
    act("shutdown", "Shut down", "shutdown"),
    act("stop", "Force off", "poweroff"),
    act("reboot", "Reboot", "reboot"),
    act("reset", "Reset", "reset"),
    act("suspend", "Pause", "suspend"),
    act("resume", "Resume", "resume"),
    act("delete", "Delete", "delete", "danger"),
  );

  // ---- console ----
  const screen = h("div", { id: "console-screen" });
  const status = h("span", { id: "console-status", role: "status" }, "closed");
  const openBtn = h("button", { type: "button", id: "console-open" }, "Open console");
  const closeBtn = h("button", { type: "button", id: "console-close", class: "secondary" }, "Close");
  const cadBtn = h("button", { type: "button", id: "console-cad", class: "secondary" }, "Ctrl+Alt+Del");
  const sendInput = h("input", { id: "console-send-text-input", type: "text", autocomplete: "off", spellcheck: "false" });
  const sendEnter = h("input", { id: "console-send-enter", type: "checkbox", checked: true });
  const sendBtn = h("button", { type: "button", id: "console-send-text", class: "secondary" }, "Type text");
  let con: ConsoleHandle | null = null;
  openBtn.addEventListener("click", async () => {
    con?.close();
    openBtn.disabled = true;
    try {
      con = await openConsole(id, screen, (s) => (status.textContent = s));
    } catch (e) {
      status.textContent = "disconnected";
      await showError(e);
    } finally {
      openBtn.disabled = false;
    }
  });
  closeBtn.addEventListener("click", () => con?.close());
  cadBtn.addEventListener("click", () => con?.rfb.sendCtrlAltDel());
  sendBtn.addEventListener("click", () => {
    if (!con) {
      void showError(new Error("Open the console first."));
      return;
    }
    con.type(sendInput.value, sendEnter.checked);
    sendInput.value = "";
    con.rfb.focus();
  });
  sendInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      sendBtn.click();
    }
  });
  onLeave(() => {
    con?.close();
    delete window.corralConsole;
  });

  // ---- disks ----
  const disksBody = h("tbody");
  const fillDisks = () =>
    replace(
      disksBody,
      g.disks.map((d) => h("tr", { dataset: { diskId: d.id } }, h("td", null, d.id), h("td", null, d.kind), h("td", null, h("code", null, d.path)), h("td", null, d.backing ?? ""))),
    );
  fillDisks();

  // ---- snapshots ----
  const snapBody = h("tbody");
  const snapProgress = h("div", { id: "snapshot-progress" });
  const snapName = h("input", { id: "snapshot-name", type: "text", maxlength: 63 });
  const snapDesc = h("input", { id: "snapshot-description", type: "text", maxlength: 1024 });
  const snapForm = h(
    "form",
    { id: "snapshot-form", class: "filters", novalidate: true },
    field("Name", snapName),
    field("Description", snapDesc),
    h("button", { type: "submit", id: "snapshot-create" }, "Take snapshot"),
  );
  const loadSnaps = async () => {
    try {
      const list = await api().guests.snapshotList({ id });
      replace(
        snapBody,
        list.length
          ? list.map((s) => {
              const rev = h("button", { type: "button", class: "secondary small revert" }, "Revert");
              const del = h("button", { type: "button", class: "danger small delete-snapshot" }, "Delete");
              rev.addEventListener("click", async () => {
                if (!(await confirmDialog(`Revert ${g.name} to snapshot ${s.name}? Changes since are lost.`, "Revert"))) return;
                const a = await attempt(() => api().guests.snapshotRevert({ id, snapshot: s.id }));
                if (a) snapProgress.prepend(opProgress(a.operationId, `revert to ${s.name}`, () => void loadSnaps()).el);
              });
              del.addEventListener("click", async () => {
                if (!(await confirmDialog(`Delete snapshot ${s.name}?`, "Delete"))) return;
                const a = await attempt(() => api().guests.snapshotDelete({ id, snapshot: s.id }));
                if (a) snapProgress.prepend(opProgress(a.operationId, `delete ${s.name}`, () => void loadSnaps()).el);
              });
              return h(
                "tr",
                { dataset: { snapshotId: s.id } },
                h("td", null, s.name),
                h("td", null, s.description ?? ""),
                h("td", { class: "snapshot-state" }, s.state),
                h("td", null, s.vmState ?? ""),
                h("td", null, fmtTime(s.createdAt)),
                h("td", null, rev, " ", del),
              );
            })
          : h("tr", null, h("td", { colspan: 6 }, "No snapshots.")),
      );
    } catch (e) {
      replace(snapBody, h("tr", null, h("td", { colspan: 6, class: "bad" }, (await failure(e)).message)));
    }
  };
  snapForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!v.mark(snapForm, "snapshot-name", v.snapshotName(snapName.value.trim()))) return;
    try {
      const a = await api().guests.snapshotCreate({ id, createSnapshot: { name: snapName.value.trim(), description: snapDesc.value || undefined } });
      snapName.value = "";
      snapDesc.value = "";
      snapProgress.prepend(opProgress(a.operationId, "snapshot", () => void loadSnaps()).el);
      void loadSnaps();
    } catch (err) {
      const f = await failure(err);
      v.mark(snapForm, "snapshot-name", f.message);
    }
  });

  // ---- resize ----
  const rCpus = h("input", { id: "resize-cpus", type: "number", min: 1, max: 256, value: g.cpus });
  const rMem = h("input", { id: "resize-memory", type: "number", min: 1, max: 1048576, value: g.memoryMib });
  const resizeProgress = h("div", { id: "resize-progress" });
  const resizeForm = h(
    "form",
    { id: "resize-form", class: "filters", novalidate: true },
    field("vCPUs", rCpus),
    field("Memory (MiB)", rMem),
    h("button", { type: "submit", id: "resize-submit" }, "Resize"),
  );
  resizeForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const ok = [v.mark(resizeForm, "resize-cpus", v.intIn(rCpus.value, 1, 256, "a number of vCPUs")), v.mark(resizeForm, "resize-memory", v.intIn(rMem.value, 1, 1048576, "memory in MiB"))].every((x) => x);
    if (!ok) return;
    const body: { cpus?: number; memoryMib?: number } = {};
    if (Number(rCpus.value) !== g.cpus) body.cpus = Number(rCpus.value);
    if (Number(rMem.value) !== g.memoryMib) body.memoryMib = Number(rMem.value);
    if (!Object.keys(body).length) {
      v.mark(resizeForm, "resize-cpus", "Nothing to change.");
      return;
    }
    const a = await attempt(() => api().guests.guestResize({ id, guestSize: body }));
    if (a) resizeProgress.prepend(opProgress(a.operationId, "resize", () => void refresh()).el);
  });

  // ---- operations ----
  const opsBody = h("tbody");
  const loadOps = async () => {
    try {
      const ops = await api().ops.operationList({ guestId: id, limit: 20 });
      replace(opsBody, ops.length ? ops.map(opRow) : h("tr", null, h("td", { colspan: 5 }, "No operations.")));
    } catch (e) {
      replace(opsBody, h("tr", null, h("td", { colspan: 5, class: "bad" }, (await failure(e)).message)));
    }
  };
  const opRow = (o: Operation) =>
    h(
      "tr",
      { dataset: { opId: o.id } },
      h("td", null, o.kind),
      h("td", { class: "op-state" }, o.state),
      h("td", null, TERMINAL.includes(o.state) ? `${o.progress.percent}% ${o.progress.stage}` : opProgress(o.id, o.kind).el),
      h("td", null, o.requestedBy),
      h("td", null, fmtTime(o.createdAt), o.error ? h("div", { class: "bad" }, o.error) : null),
    );

  // ---- boot jobs ----
  const jobsBody = h("tbody");
  const loadJobs = async () => {
    try {
      const jobs = await api().scripts.guestBootJobs({ id });
      replace(
        jobsBody,
        jobs.length
          ? jobs.map((j) => h("tr", { dataset: { jobId: j.id } }, h("td", null, j.script), h("td", { class: "job-state" }, j.state), h("td", null, String(j.attempts)), h("td", null, fmtTime(j.createdAt)), h("td", { class: "bad" }, j.error ?? "")))
          : h("tr", null, h("td", { colspan: 5 }, "No boot jobs.")),
      );
    } catch (e) {
      replace(jobsBody, h("tr", null, h("td", { colspan: 5, class: "bad" }, (await failure(e)).message)));
    }
  };

  // ---- domain XML ----
  const xml = h("pre", { id: "guest-xml" });
  const loadXml = async () => {
    try {
      xml.textContent = (await api().guests.guestDomainXml({ id })).xml ?? "(not reported yet)";
    } catch (e) {
      xml.textContent = (await failure(e)).message;
    }
  };

  // ---- metrics ----
  const range = rangeSelect("metrics-range");
  const metricsBox = h("div", { id: "guest-metrics" });
  const loadMetrics = async () => {
    try {
      const [avg, max] = await Promise.all([
        api().metrics.guestMetrics({ id, from: range.value, agg: "avg" }),
        api().metrics.guestMetrics({ id, from: range.value, agg: "max" }),
      ]);
      replace(metricsBox, charts(avg, max));
    } catch (e) {
      replace(metricsBox, h("p", { class: "muted" }, `No metrics: ${(await failure(e)).message}`));
    }
  };
  range.addEventListener("change", () => void loadMetrics());

  replace(
    root,
    h(
      "section",
      { id: "guest", dataset: { guestId: id } },
      h("p", null, h("a", { href: "#/guests" }, "← Guests")),
      h("div", { class: "title-row" }, h("h1", null, h("span", { id: "guest-name" }, g.name), " ", stateEl), reasonEl),
      actions,
      actionProgress,
      h("div", { class: "grid" }, h("div", { class: "card" }, h("h2", null, "Details"), facts), h("div", { class: "card" }, h("h2", null, "Disks"), table("guest-disks", ["Id", "Kind", "Path", "Backing"], disksBody))),
      h(
        "div",
        { class: "card", id: "console" },
        h("h2", null, "Console"),
        h("div", { class: "toolbar" }, openBtn, closeBtn, cadBtn, h("span", null, "Status: ", status)),
        screen,
        h(
          "div",
          { class: "toolbar" },
          h("label", { for: "console-send-text-input" }, "Type"),
          sendInput,
          h("label", null, sendEnter, " then Enter"),
          sendBtn,
        ),
      ),
      h("h2", null, "Snapshots"),
      snapForm,
      snapProgress,
      table("guest-snapshots", ["Name", "Description", "State", "Taken while", "Created", ""], snapBody),
      h("h2", null, "Resize"),
      resizeForm,
      resizeProgress,
      h("h2", null, "Metrics"),
      h("div", { class: "toolbar" }, h("label", { for: "metrics-range" }, "Range"), range),
      metricsBox,
      h("h2", null, "Operations"),
      table("guest-operations", ["Kind", "State", "Progress", "By", "When"], opsBody),
      h("h2", null, "Boot jobs"),
      table("guest-boot-jobs", ["Script", "State", "Attempts", "Queued", "Error"], jobsBody),
      h("h2", null, "Domain XML"),
      xml,
    ),
  );

  // Live: state from events; operations of this guest reload the history.
  let opsTimer: ReturnType<typeof setTimeout> | undefined;
  onLeave(() => clearTimeout(opsTimer));
  onPage(["guest.state", "operation"], (ev) => {
    const d = (ev.data ?? {}) as { state?: string; guest_id?: string };
    if (ev.kind === "guest.state" && (ev.subject === id || d.guest_id === id) && d.state) {
      setState(d.state);
      g.state = d.state as Guest["state"];
    } else if (ev.kind === "operation" && d.guest_id === id && d.state && (TERMINAL.includes(d.state) || d.state === "pending")) {
      clearTimeout(opsTimer);
      opsTimer = setTimeout(() => {
        void loadOps();
        void loadJobs();
        if (d.state === "succeeded") {
          void refresh();
          void loadXml();
        }
      }, 400);
    }
  });
  await Promise.all([loadSnaps(), loadOps(), loadJobs(), loadXml(), loadMetrics()]);
}
