import type { Observer, Subscriber } from 'rxjs';

/**
 * `fn`, with an exception it throws passed to `subscriber.error`: what RxJS's own operators do with a
 * throwing callback. Without it an exception in an operator's handler (a user's `onIncomplete`, a bug)
 * would be reported as unhandled while the stream ran on without the sample that raised it.
 */
export function orError<A extends unknown[]>(
  subscriber: Subscriber<unknown>,
  fn: (...args: A) => void,
): (...args: A) => void {
  return (...args) => {
    try {
      fn(...args);
    } catch (error) {
      subscriber.error(error);
    }
  };
}

/**
 * The observer an operator subscribes to its source with: `next` and `complete` (default: complete the
 * output) guarded by orError, and the source's error passed on.
 */
export function forwardErrors<T>(
  subscriber: Subscriber<unknown>,
  handlers: { next: (value: T) => void; complete?: () => void },
): Observer<T> {
  return {
    next: orError(subscriber, handlers.next),
    error: (error: unknown) => subscriber.error(error),
    complete: orError(subscriber, handlers.complete ?? (() => subscriber.complete())),
  };
}
