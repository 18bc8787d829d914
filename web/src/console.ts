// The guest's screen: noVNC over the controller's WebSocket (`ConsoleTicket.websocket`,
// e.g. `/console/vnc?ticket=…`); the browser never talks to a node.
import RFB from "@novnc/novnc";
import { api } from "./app";

const XK_RETURN = 0xff0d;
const XK_SHIFT_L = 0xffe1;
/** Characters typed with Shift on a US keyboard: QEMU maps keysyms to scancodes, so
 * Shift is held around them for the guest to see the right character. */
const SHIFTED = /[A-Z~!@#$%^&*()_+{}|:"<>?]/;

/** The X11 keysym of a character: Latin-1 maps one-to-one, the rest by the Unicode
 * keysym range (what noVNC's keysymdef falls back to; the package exports only RFB). */
function keysymOf(cp: number): number {
  if (cp >= 0x20 && cp <= 0xff) return cp;
  if (cp === 0x09) return 0xff09; // Tab
  return 0x01000000 | cp;
}

declare global {
  interface Window {
    corralConsole?: { rfb: RFB; bytesReceived: () => number };
  }
}

export interface ConsoleHandle {
  rfb: RFB;
  close(): void;
  type(text: string, enter: boolean): void;
}

/** Asks for a ticket and connects; `status` gets `connecting`, `connected`, `disconnected`. */
export async function openConsole(guestId: string, screen: HTMLElement, status: (s: string) => void): Promise<ConsoleHandle> {
  status("connecting");
  const ticket = await api().guests.guestConsole({ id: guestId, consoleRequest: { validSeconds: 60 } });
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${ticket.websocket}`;
  // Our own socket, handed to noVNC, so the bytes received can be counted.
  const ws = new WebSocket(url, ["binary"]);
  ws.binaryType = "arraybuffer";
  let bytes = 0;
  ws.addEventListener("message", (e: MessageEvent) => {
    const d = e.data as ArrayBuffer | string;
    bytes += typeof d === "string" ? d.length : d.byteLength;
  });
  screen.classList.add("active");
  const rfb = new RFB(screen, ws, { credentials: { password: ticket.password } });
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  rfb.addEventListener("connect", () => status("connected"));
  rfb.addEventListener("disconnect", () => {
    status("disconnected");
    screen.classList.remove("active");
  });
  rfb.addEventListener("credentialsrequired", () => rfb.sendCredentials({ password: ticket.password }));
  rfb.addEventListener("securityfailure", () => status("disconnected"));
  window.corralConsole = { rfb, bytesReceived: () => bytes };
  let open = true;
  return {
    rfb,
    close() {
      if (open) {
        open = false;
        try {
          rfb.disconnect();
        } catch {
          /* already closed */
        }
      }
    },
    type(text: string, enter: boolean) {
      for (const ch of text) {
        const cp = ch.codePointAt(0) ?? 0;
        const sym = ch === "\n" ? XK_RETURN : keysymOf(cp);
        const shift = SHIFTED.test(ch);
        if (shift) rfb.sendKey(XK_SHIFT_L, "ShiftLeft", true);
        rfb.sendKey(sym, null, true);
        rfb.sendKey(sym, null, false);
        if (shift) rfb.sendKey(XK_SHIFT_L, "ShiftLeft", false);
      }
      if (enter) {
        rfb.sendKey(XK_RETURN, "Enter", true);
        rfb.sendKey(XK_RETURN, "Enter", false);
      }
    },
  };
}
