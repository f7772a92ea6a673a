// What to do with each kind of EDU a peer sends in a transaction (`PUT /send/{txnId}`).
// https://spec.matrix.org/latest/server-server-api/#edus
//
// Each handler is given the authenticated origin and the EDU's content, already known to be an
// object. It checks that the origin may speak for what the EDU names (a typing user, a to-device
// sender, a device list's owner must belong to the origin) and applies it through the services.
// A handler that throws fails only its own EDU: the transaction goes on.

export type EduHandler = (origin: string, content: Record<string, unknown>) => Promise<void>;

export class EduHandlers {
  private readonly handlers = new Map<string, EduHandler>();

  register(eduType: string, handler: EduHandler): void {
    if (this.handlers.has(eduType)) throw new Error(`an EDU handler for ${eduType} is already registered`);
    this.handlers.set(eduType, handler);
  }

  /** The handler for an EDU type, if we understand it (unknown types are ignored, as the spec says). */
  get(eduType: string): EduHandler | undefined {
    return this.handlers.get(eduType);
  }
}
