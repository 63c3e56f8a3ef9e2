import {
  Observable,
  asyncScheduler,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import { SCHEMA_VERSION, type Group, type ScoredRollout } from '../../schemas/index.ts';
import { detachedMetrics, type Counter, type Metrics } from '../metrics/metrics.ts';
import { forwardErrors, orError } from './forwardErrors.ts';

export type IncompleteReason = 'timeout' | 'evicted' | 'source_completed';

/** A group that did not fill up: reported (and counted), never trained on. */
export interface IncompleteGroup {
  groupId: string;
  reason: IncompleteReason;
  expected: number;
  samples: ScoredRollout[];
}

export interface GroupSamplesOptions {
  /** How long a group may stay open after its first sample, in ms of the scheduler's clock. */
  maxWaitMs: number;
  /** At most this many groups are open; opening one more closes the oldest as incomplete. */
  maxOpenGroups?: number;
  /**
   * Remember up to this many closed group ids (always at least the last half of them) to recognise
   * samples that arrive after their group closed. Default 4 x maxOpenGroups.
   */
  closedIdMemory?: number;
  /** Called with every incomplete group. */
  onIncomplete?: (group: IncompleteGroup) => void;
  metrics?: Metrics;
  scheduler?: SchedulerLike;
}

interface OpenGroup {
  samples: (ScoredRollout | undefined)[];
  received: number;
  deadline: number;
}

/**
 * Collects the G samples of each prompt into a Group, emitted as soon as its last sample arrives.
 *
 * ```
 * source:  --a0--b0--a1--b1--c0-------------|
 * output:  ------------A-----B--------------|    (G = 2; c never completes: onIncomplete(c))
 * ```
 *
 * Groups are keyed by `groupId` and complete at `groupSize` distinct sample indices; a re-delivered
 * sample (same index) is ignored and counted. A group still open `maxWaitMs` after its first sample,
 * or pushed out by `maxOpenGroups`, or open when the source completes, goes to `onIncomplete`. One
 * timer serves every open group: groups open in time order, so the oldest deadline is always first.
 *
 * Counters: groups.emitted; drops and drops.samples with reason incomplete_timeout, incomplete_evicted,
 * incomplete_source_completed; drops.samples{reason=late} (a sample of a group closed incomplete that it
 * had not received, counted once); samples.duplicate (re-deliveries, not a loss: a sample the group
 * already held, open or closed). Gauge: groups.open.
 */
export function groupSamples(options: GroupSamplesOptions): OperatorFunction<ScoredRollout, Group> {
  const scheduler = options.scheduler ?? asyncScheduler;
  const maxOpen = options.maxOpenGroups ?? 10_000;
  const closedMemory = options.closedIdMemory ?? 4 * maxOpen;
  const metrics = options.metrics ?? detachedMetrics();
  const emitted = metrics.counter('groups.emitted');
  const reasons: IncompleteReason[] = ['timeout', 'evicted', 'source_completed'];
  const dropped = Object.fromEntries(
    reasons.map((r) => [
      r,
      {
        groups: metrics.counter('drops', { reason: `incomplete_${r}` }),
        samples: metrics.counter('drops.samples', { reason: `incomplete_${r}` }),
      },
    ]),
  ) as Record<IncompleteReason, { groups: Counter; samples: Counter }>;
  const duplicates = metrics.counter('samples.duplicate');
  const late = metrics.counter('drops.samples', { reason: 'late' });
  const openGauge = metrics.gauge('groups.open');

  return (source) =>
    new Observable<Group>((subscriber) => {
      // Map iteration order is insertion order, which is deadline order.
      const open = new Map<string, OpenGroup>();
      // Closed group ids -> true if they completed (a sample for one is a re-delivery), else the indices
      // they had received (a sample of one of those is a re-delivery, of another index late).
      // Two generations: ids go into the young one; when it holds half the memory it becomes the old
      // one and the previous old one is dropped whole. No per-id deletes: a Map that deletes as much
      // as it inserts keeps its dead slots until it rehashes, and lookups walked them (bench/operators).
      const half = Math.max(1, Math.ceil(closedMemory / 2));
      let closedYoung = new Map<string, true | Set<number>>();
      let closedOld = new Map<string, true | Set<number>>();
      let timer: Subscription | undefined;

      const rememberClosed = (id: string, complete: true | Set<number>) => {
        if (closedYoung.size >= half) {
          closedOld = closedYoung;
          closedYoung = new Map();
        }
        closedYoung.set(id, complete);
      };
      const wasClosed = (id: string): true | Set<number> | undefined =>
        closedYoung.get(id) ?? closedOld.get(id);

      const close = (id: string, group: OpenGroup, reason: IncompleteReason) => {
        open.delete(id);
        const samples = group.samples.filter((s): s is ScoredRollout => s !== undefined);
        rememberClosed(id, new Set(samples.map((s) => s.index)));
        dropped[reason].groups.inc();
        dropped[reason].samples.inc(samples.length);
        options.onIncomplete?.({ groupId: id, reason, expected: group.samples.length, samples });
      };

      // Deadlines only grow (each new group's is the latest), so a pending timer is never late for a
      // new group: only expire() needs to look for the next deadline.
      const armTimer = () => {
        if (timer) return;
        const first = open.values().next();
        if (first.done) return;
        timer = scheduler.schedule(expire, Math.max(0, first.value.deadline - scheduler.now()));
      };

      const expire = orError(subscriber, () => {
        timer = undefined;
        const now = scheduler.now();
        for (const [id, group] of open) {
          if (group.deadline > now) break;
          close(id, group, 'timeout');
        }
        openGauge.set(open.size);
        armTimer();
      });

      const subscription = source.subscribe(
        forwardErrors(subscriber, {
          next: (sample: ScoredRollout) => {
            const id = sample.groupId;
            let group = open.get(id);
            if (!group) {
              const closed = wasClosed(id);
              if (closed === true || closed?.has(sample.index)) {
                duplicates.inc();
                return;
              }
              if (closed) {
                closed.add(sample.index); // counted once: a re-delivery of it is a duplicate
                late.inc();
                return;
              }
              if (open.size >= maxOpen) {
                const [oldestId, oldest] = open.entries().next().value as [string, OpenGroup];
                close(oldestId, oldest, 'evicted');
              }
              group = {
                samples: new Array(sample.groupSize),
                received: 0,
                deadline: scheduler.now() + options.maxWaitMs,
              };
              open.set(id, group);
              openGauge.value = open.size;
              armTimer();
            }
            if (sample.index >= group.samples.length || group.samples[sample.index] !== undefined) {
              duplicates.inc();
              return;
            }
            group.samples[sample.index] = sample;
            if (++group.received === group.samples.length) {
              open.delete(id);
              openGauge.value = open.size;
              rememberClosed(id, true);
              emitted.inc();
              subscriber.next({
                schemaVersion: SCHEMA_VERSION,
                groupId: id,
                samples: group.samples as ScoredRollout[],
              });
            }
          },
          complete: () => {
            for (const [id, group] of open) close(id, group, 'source_completed');
            openGauge.set(0);
            subscriber.complete();
          },
        }),
      );

      return () => {
        subscription.unsubscribe();
        timer?.unsubscribe();
        open.clear();
        closedYoung.clear();
        closedOld.clear();
      };
    });
}
