import type { AdvantagedSample, Rollout, ScoredRollout } from '../../schemas/index.ts';

// The stages add a field or two to each sample. These copies list the fields instead of using
// `{ ...s, extra }` or Object.assign: in V8 (Node 20) spread copies of these objects each got a hidden
// class of their own (every later property read turned megamorphic, 100x slower downstream), and
// Object.assign was 50x slower to create than a literal (bench/operators). The return types make the
// compiler name any required field a schema gains.

export function withRewards(
  r: Rollout,
  rewards: Record<string, number | null>,
  reward: number | null,
): ScoredRollout {
  return {
    schemaVersion: r.schemaVersion,
    id: r.id,
    groupId: r.groupId,
    index: r.index,
    groupSize: r.groupSize,
    prompt: r.prompt,
    promptTokenIds: r.promptTokenIds,
    completionTokenIds: r.completionTokenIds,
    completion: r.completion,
    behaviourLogProbs: r.behaviourLogProbs,
    policyVersion: r.policyVersion,
    finishReason: r.finishReason,
    truncatedMass: r.truncatedMass,
    rewards,
    reward,
  };
}

export function withAdvantage(s: ScoredRollout, advantage: number): AdvantagedSample {
  return {
    schemaVersion: s.schemaVersion,
    id: s.id,
    groupId: s.groupId,
    index: s.index,
    groupSize: s.groupSize,
    prompt: s.prompt,
    promptTokenIds: s.promptTokenIds,
    completionTokenIds: s.completionTokenIds,
    completion: s.completion,
    behaviourLogProbs: s.behaviourLogProbs,
    policyVersion: s.policyVersion,
    finishReason: s.finishReason,
    truncatedMass: s.truncatedMass,
    rewards: s.rewards,
    reward: s.reward,
    advantage,
  };
}
