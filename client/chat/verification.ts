// Device verification in parley-chat: SAS (emoji comparison, as Element does it) through the E2EE
// machine's SasVerification. The person compares the seven emoji on both screens and answers /yes
// or /no; nothing is marked verified without that answer.
import type { SasEmoji, SasVerification } from "../crypto/sas.ts";

/**
 * What parley-chat needs of the E2EE machine for verification. Typed here rather than taken from
 * e2ee.ts so the terminal client builds whether or not that machine offers verification yet.
 */
export interface VerificationApi {
  requestVerification?(userId: string, deviceId: string): Promise<SasVerification>;
  onVerificationRequest?: (verification: SasVerification) => void;
}

export interface VerificationView {
  /** Shows a panel (the emoji, what to answer) or a status line. */
  panel(title: string, lines: string[]): void;
  status(text: string, kind: "info" | "error"): void;
}

/** The emoji as a person compares them: the picture and its name, as Element shows them. */
export function emojiLines(emojis: SasEmoji[]): string[] {
  return [emojis.map((e) => e.emoji).join("   "), emojis.map((e) => e.description).join(", ")];
}

function otherOf(v: SasVerification): { userId: string; deviceId: string } {
  // SasVerification does not expose its peer (yet): read from the options it was made with.
  const other = (v as unknown as { opts?: { other?: { userId?: unknown; deviceId?: unknown } } }).opts?.other;
  return typeof other?.userId === "string" && typeof other.deviceId === "string" ? { userId: other.userId, deviceId: other.deviceId } : { userId: "?", deviceId: "?" };
}

export class ChatVerifications {
  /** Requests from other devices not yet answered, by "user device". */
  private readonly incoming = new Map<string, SasVerification>();
  /** The verification the person is in now (one at a time). */
  private current: SasVerification | undefined;

  constructor(
    private readonly api: VerificationApi,
    private readonly view: VerificationView,
  ) {
    if ("requestVerification" in api || "onVerificationRequest" in api) {
      api.onVerificationRequest = (v) => this.onRequest(v);
    }
  }

  get available(): boolean {
    return typeof this.api.requestVerification === "function";
  }

  private onRequest(v: SasVerification): void {
    const { userId, deviceId } = otherOf(v);
    this.incoming.set(`${userId} ${deviceId}`, v);
    v.done.catch(() => this.incoming.delete(`${userId} ${deviceId}`));
    this.view.status(`${userId} (device ${deviceId}) asks to verify this device: /verify ${userId} ${deviceId} to accept`, "info");
  }

  /** /verify: answers a pending request from that device, or sends ours. Resolves when it ends. */
  async verify(userId: string, deviceId: string): Promise<void> {
    if (!this.available) {
      this.view.status("Device verification is not available in this build", "error");
      return;
    }
    if (this.current && this.current.state !== "done" && this.current.state !== "cancelled") {
      this.view.status("A verification is already in progress: /no cancels it", "error");
      return;
    }
    const title = `Verifying ${userId} ${deviceId}`;
    const key = `${userId} ${deviceId}`;
    let v = this.incoming.get(key);
    this.incoming.delete(key);
    this.view.panel(title, ["Waiting for the other device…", "", "/no cancels."]);
    if (v) {
      this.current = v;
      if (v.state === "request_received") await v.ready();
    } else {
      v = await this.api.requestVerification!(userId, deviceId);
      this.current = v;
    }
    const verification = v;
    // After request and ready either side may start; the spec settles two starts at once, so the
    // side that is ready first starts rather than waiting on the other.
    void (async () => {
      for (let i = 0; i < 6000 && (verification.state === "requested" || verification.state === "request_received"); i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      if (verification.state === "ready") await verification.start().catch(() => {});
    })();
    try {
      await verification.keysExchanged;
      const emojis = verification.emojis();
      const decimals = verification.decimals();
      this.view.panel(title, [
        "Compare with the other device. Do they show the same, in the same order?",
        "",
        ...(emojis ? emojiLines(emojis) : decimals ? [decimals.join("  ")] : []),
        "",
        "/yes if they match, /no if they do not.",
      ]);
      await verification.done;
      this.view.panel(title, []);
      this.view.status(`${userId} ${deviceId} is verified`, "info");
    } catch (err) {
      this.view.status(`Verification of ${userId} ${deviceId} ended: ${err instanceof Error ? err.message : String(err)}. The device is NOT verified`, "error");
    } finally {
      if (this.current === verification) this.current = undefined;
    }
  }

  /** /yes or /no: the person's answer to the comparison (/no also cancels a pending request). */
  async answer(match: boolean): Promise<void> {
    const v = this.current;
    if (!v) {
      const [key, pending] = [...this.incoming][0] ?? [];
      if (pending && !match) {
        this.incoming.delete(key!);
        await pending.cancel("m.user");
        this.view.status("Verification request refused", "info");
        return;
      }
      this.view.status("No verification in progress", "error");
      return;
    }
    if (!match) await v.cancel(v.state === "keys_exchanged" ? "m.mismatched_sas" : "m.user");
    else if (v.state === "keys_exchanged") await v.confirm();
    else this.view.status("Nothing to confirm yet", "error");
  }
}
