import { Worker, type MessagePort, type Transferable } from 'node:worker_threads';

/**
 * A worker thread running one of our TypeScript modules, with request/reply by id. Each worker
 * loads its own tfjs: one backend per thread is how both cores of a machine are used.
 */
export class WorkerClient<Request extends { type: string }, Reply extends { type: string }> {
  private readonly worker: Worker;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private failure: Error | undefined;

  constructor(
    readonly name: string,
    moduleUrl: URL,
  ) {
    // The module is TypeScript: bootstrap.mjs registers tsx's loader in the thread, then imports it.
    this.worker = new Worker(new URL('./bootstrap.mjs', import.meta.url), {
      workerData: { module: moduleUrl.href },
    });
    this.worker.on('message', (message: Reply & { id: number; error?: string }) => {
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      if (message.error !== undefined) waiter.reject(new Error(`${this.name} worker: ${message.error}`));
      else waiter.resolve(message);
    });
    const fail = (err: Error) => {
      this.failure = err;
      for (const waiter of this.pending.values()) waiter.reject(err);
      this.pending.clear();
    };
    this.worker.on('error', (err) => fail(new Error(`${this.name} worker crashed: ${err.message}`)));
    this.worker.on('exit', (code) => {
      if (code !== 0) fail(new Error(`${this.name} worker exited with code ${code}`));
    });
  }

  request<R extends Reply = Reply>(message: Request, transfer: Transferable[] = []): Promise<R> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<R>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (r: Reply) => void, reject });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

/** The worker side: answers each request with the handler's reply (or the error's message). */
export async function serve<Request extends { type: string }>(
  port: MessagePort,
  handle: (request: Request) => Promise<{ reply: object; transfer?: Transferable[] }>,
): Promise<void> {
  // Requests are handled one at a time, in order: a tfjs backend is not re-entrant.
  let queue = Promise.resolve();
  port.on('message', (message: Request & { id: number }) => {
    queue = queue.then(async () => {
      try {
        const { reply, transfer } = await handle(message);
        port.postMessage({ ...reply, id: message.id }, transfer ?? []);
      } catch (err) {
        port.postMessage({ type: 'error', id: message.id, error: (err as Error).stack ?? String(err) });
      }
    });
  });
}
