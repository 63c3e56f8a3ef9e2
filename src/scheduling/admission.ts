import { BehaviorSubject, distinctUntilChanged, type Observable } from 'rxjs';

export interface StalenessAdmissionOptions {
  /** Staleness bound, as in boundedStaleness. */
  eta: number;
  /** Samples consumed by one policy version, a GradientBatch (B). */
  samplesPerStep: number;
  /** Most samples that may be generating at once. */
  maxConcurrent: number;
}

/**
 * How many more samples generation may start now so that none will be older than eta versions when
 * the learner reaches it (AReaL's admission control for bounded staleness):
 *
 *   capacity = min(maxConcurrent - running, (eta + 1) * B - (running + accepted - trained))
 *
 * where B is samples per step, `running` samples are being generated, `accepted` have been generated
 * and not discarded, and `trained` have been trained on: what is generated and not yet trained may fill
 * eta + 1 steps. Samples discarded before training (zero variance, incomplete groups, stale) give their
 * place back. It counts the samples each step trained, not B per step: a step whose batch lost samples
 * (stale ones) took fewer, and crediting it with B let generation run further ahead after every such
 * step, making more samples stale.
 */
export class StalenessAdmission {
  private running = 0;
  private accepted = 0;
  private trainedSamples = 0;
  private readonly subject: BehaviorSubject<number>;

  constructor(private readonly options: StalenessAdmissionOptions) {
    for (const key of ['samplesPerStep', 'maxConcurrent'] as const) {
      if (!(options[key] >= 1))
        throw new RangeError(`StalenessAdmission: ${key} must be >= 1, got ${options[key]}`);
    }
    if (!Number.isInteger(options.eta) || options.eta < 0) {
      throw new RangeError(`StalenessAdmission: eta must be an integer >= 0, got ${options.eta}`);
    }
    this.subject = new BehaviorSubject(this.compute());
  }

  /** The capacity after every change; generation waits while it is 0. */
  get capacity$(): Observable<number> {
    return this.subject.pipe(distinctUntilChanged());
  }

  get capacity(): number {
    return this.subject.value;
  }

  /** The learner took an optimiser step (a new version) on `n` samples. */
  trained(n: number): void {
    this.trainedSamples += n;
    this.update();
  }

  /** Generation of `n` samples began. Throws if that exceeds the capacity: a caller bug, not a race. */
  started(n: number): void {
    if (n > this.capacity)
      throw new RangeError(`StalenessAdmission: started ${n} samples with capacity ${this.capacity}`);
    this.running += n;
    this.update();
  }

  /** `n` samples finished generating. */
  finished(n: number): void {
    this.running -= n;
    this.accepted += n;
    this.update();
  }

  /** `n` accepted samples were dropped before training and no longer count towards a step. */
  discarded(n: number): void {
    this.accepted -= n;
    this.update();
  }

  private compute(): number {
    const { eta, samplesPerStep, maxConcurrent } = this.options;
    const waiting = this.running + this.accepted - this.trainedSamples;
    const byStaleness = (eta + 1) * samplesPerStep - waiting;
    return Math.max(0, Math.min(maxConcurrent - this.running, byStaleness));
  }

  private update(): void {
    this.subject.next(this.compute());
  }
}

/**
 * How many prompts (of `groupSize` samples each) the next generation round may take, given the
 * admission's capacity: 0 means wait. A round is `promptsPerStep` prompts when the capacity allows.
 * With eta = 0 a step may need fewer: once dynamic sampling has dropped groups from a partly filled
 * batch, the capacity is exactly the samples the batch lacks, and waiting for a whole round would wait
 * forever (the learner cannot step on a short batch), so the round tops the batch up. With eta >= 1
 * the capacity is at least a whole step whenever the batch is short, and rounds stay whole.
 */
export function nextRoundPrompts(
  capacity: number,
  { eta, groupSize, promptsPerStep }: { eta: number; groupSize: number; promptsPerStep: number },
): number {
  const smallest = eta === 0 ? 1 : promptsPerStep;
  const fits = Math.min(promptsPerStep, Math.floor(capacity / groupSize));
  return fits >= smallest ? fits : 0;
}

/**
 * Dynamic sampling's budget (DAPO): the samples dropped since the last policy version because their group
 * carried no signal (zero variance) or did not complete (incomplete_*, no_rollouts). They are replaced by
 * more generation; once `maxRounds` batches' worth (maxRounds x batchSize samples) have been dropped
 * without a step, the run gives up with an error that says why, instead of generating forever. Counting
 * drops, not samples started, leaves out what generation runs ahead under the staleness bound, and
 * spends nothing when nothing is dropped (dynamic sampling off, every group complete).
 */
export class DynamicSamplingBudget {
  private sinceStep = 0;
  private byReason = new Map<string, number>();

  constructor(
    private readonly maxRounds: number,
    private readonly batchSize: number,
  ) {}

  /** `samples` were dropped for `reason`. Throws once more than the budget has been dropped since the last step. */
  dropped(samples: number, reason: string): void {
    this.sinceStep += samples;
    this.byReason.set(reason, (this.byReason.get(reason) ?? 0) + samples);
    if (this.sinceStep > this.maxRounds * this.batchSize) {
      const reasons = [...this.byReason].map(([r, n]) => `${r} ${n}`).join(', ');
      throw new Error(
        `dynamic sampling: ${this.sinceStep} samples were dropped since the last step (${reasons}), more than ` +
          `${this.maxRounds} batches of ${this.batchSize}, without filling one: almost every group scored the same ` +
          'for all its samples (zero_variance), or did not complete in time (incomplete_*, no_rollouts). The policy ' +
          'may be too weak (more pretraining) or the task too hard; or set grpo.dynamicSampling to false, raise ' +
          'grpo.maxGenerationRounds, or give groups longer (grpo.groupTimeoutMs).',
      );
    }
  }

  /** The learner trained a batch (a new version): the budget starts over. */
  stepped(): void {
    this.sinceStep = 0;
    this.byReason = new Map();
  }
}
