export type State = "idle" | "connecting" | "authenticating" | "authenticated" | "reconnecting" | "closed";

/** The WebSocket subprotocol the client offers and the gateway confirms. */
export declare const SUBPROTOCOL: "ticketgate.v1";
export declare const FATAL_CLOSE_CODES: readonly number[];

export interface Backoff {
  initialMs?: number;
  maxMs?: number;
  factor?: number;
  /** 0..1: the share of each delay that is randomised. */
  jitter?: number;
}

export interface ClientOptions {
  getJwt: () => string | Promise<string>;
  baseUrl?: string;
  tokenPath?: string;
  socketPath?: string;
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  backoff?: Backoff;
  WebSocket?: unknown;
  fetch?: typeof fetch;
}

export declare class TicketError extends Error {
  status: number;
  code: string;
}

export interface ClientEvents {
  state: CustomEvent<{ state: State }>;
  authenticated: CustomEvent<{ userId: string; expiresAt: number; refreshed: boolean }>;
  token_expiring: CustomEvent<{ expiresAt: number }>;
  /** `seq` counts the broadcasts of the publishing `node` (one series per node id). */
  broadcast: CustomEvent<{ seq: number; node: string; data: unknown }>;
  message: CustomEvent<{ data: unknown }>;
  close: CustomEvent<{ code: number; reason: string }>;
  reconnecting: CustomEvent<{ attempt: number; delayMs: number }>;
  error: CustomEvent<{ error: unknown }>;
  pong: CustomEvent<{ type: "pong" }>;
  echo: CustomEvent<{ type: "echo"; data: unknown }>;
}

export declare class TicketgateClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly state: State;
  readonly userId: string | null;
  readonly expiresAt: number | null;
  connect(): Promise<{ userId: string; expiresAt: number }>;
  close(code?: number, reason?: string): void;
  echo(data: unknown): void;
  ping(): void;
  addEventListener<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
}
