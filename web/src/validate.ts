// Field rules of the API (from the OpenAPI descriptions), checked before sending (S34).

/** Guest names and hostnames: RFC 1123 labels, lowercase, starting with a letter. */
export function guestName(s: string): string | null {
  if (!s) return "Enter a name.";
  if (s.length > 63) return "At most 63 characters.";
  if (!/^[a-z]/.test(s)) return "Must start with a lowercase letter.";
  if (!/^[a-z0-9-]+$/.test(s)) return "Only lowercase letters, digits and '-'.";
  if (s.endsWith("-")) return "Must not end with '-'.";
  return null;
}

export function intIn(v: string, min: number, max: number, what = "a whole number"): string | null {
  if (v.trim() === "") return `Enter ${what}.`;
  if (!/^\d+$/.test(v.trim())) return `Enter ${what}.`;
  const n = Number(v);
  if (n < min || n > max) return `Between ${min} and ${max}.`;
  return null;
}

/** Users: lowercase letters, digits, `.`, `_` and `-`; 1–64 characters. */
export function userName(s: string): string | null {
  if (!s) return "Enter a name.";
  if (s.length > 64) return "At most 64 characters.";
  if (!/^[a-z0-9._-]+$/.test(s)) return "Only lowercase letters, digits, '.', '_' and '-'.";
  return null;
}

/** Scripts: 1–64 lowercase letters, digits, `-` or `_`. */
export function scriptName(s: string): string | null {
  if (!s) return "Enter a name.";
  if (s.length > 64) return "At most 64 characters.";
  if (!/^[a-z0-9_-]+$/.test(s)) return "Only lowercase letters, digits, '-' and '_'.";
  return null;
}

/** Snapshots: 1-63 letters, digits, `.`, `_` or `-`. */
export function snapshotName(s: string): string | null {
  if (!s) return "Enter a name.";
  if (s.length > 63) return "At most 63 characters.";
  if (!/^[A-Za-z0-9._-]+$/.test(s)) return "Only letters, digits, '.', '_' and '-'.";
  return null;
}

/** Tags: each 1–64 of letters, digits and `.`, `_`, `-`, `:`, `=`, `/`; up to 32. */
export function tags(list: string[]): string | null {
  if (list.length > 32) return "At most 32 tags.";
  for (const t of list) {
    if (t.length > 64) return `Tag "${t}" is longer than 64 characters.`;
    if (!/^[A-Za-z0-9._:=/-]+$/.test(t)) return `Tag "${t}": only letters, digits and . _ - : = /`;
  }
  return null;
}

export function password(s: string, required: boolean): string | null {
  if (!s) return required ? "Enter a password." : null;
  if (s.length < 8) return "At least 8 characters.";
  if (s.length > 1024) return "At most 1024 characters.";
  if (/[\r\n]/.test(s)) return "No line breaks.";
  return null;
}

export function ipv4(s: string): string | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s.trim());
  if (!m || m.slice(1).some((p) => Number(p) > 255)) return "Enter an IPv4 address.";
  return null;
}

/** A random password from `crypto.getRandomValues` (S46): 20 characters, unbiased. */
export function randomPassword(length = 20): string {
  const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.!";
  const out: string[] = [];
  const buf = new Uint8Array(1);
  while (out.length < length) {
    crypto.getRandomValues(buf);
    // Rejection sampling: no modulo bias.
    if (buf[0] < 256 - (256 % alphabet.length)) out.push(alphabet[buf[0] % alphabet.length]);
  }
  return out.join("");
}

/** Sets or clears the `.field-error[data-for=id]` beside a field; returns whether ok. */
export function mark(root: ParentNode, id: string, error: string | null): boolean {
  const el = root.querySelector<HTMLElement>(`.field-error[data-for="${id}"]`);
  const input = root.querySelector<HTMLElement>(`#${id}`);
  if (el) el.textContent = error ?? "";
  if (input) {
    if (error) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    const errId = `${id}-error`;
    if (el) el.id = errId;
    if (error) input.setAttribute("aria-describedby", errId);
  }
  return !error;
}
