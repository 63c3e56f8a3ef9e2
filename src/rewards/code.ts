import { z } from 'zod';
import { lastAnswerTag } from './answer.ts';
import type { RewardFunction, RewardInput } from './rewards.ts';
import { Sandbox, type SandboxOptions, type TestResult } from './sandbox.ts';

/** The reference of a programming prompt (`prompt.answer`): stdin/stdout test cases. */
export const CodeAnswer = z
  .object({
    tests: z.array(z.object({ input: z.string(), output: z.string() }).strict()).min(1),
  })
  .strict();
export type CodeAnswer = z.infer<typeof CodeAnswer>;

const FENCE = /```[ \t]*(?:js|javascript|node|cjs|mjs)?[ \t]*\r?\n([\s\S]*?)```/gi;

/**
 * The program of a completion: the text of the last <answer>...</answer> outside its chain of thought, or
 * the last ```js fenced block inside it when there is one. null when there is no answer or it is empty.
 */
export function extractProgram(completion: string): string | null {
  const answer = lastAnswerTag(completion);
  if (answer === null) return null;
  const fences = [...answer.matchAll(FENCE)];
  const program = (fences.length > 0 ? fences[fences.length - 1]![1]! : answer).trim();
  return program === '' ? null : program;
}

export interface CodeRewardOptions extends SandboxOptions {
  /** A sandbox to share; by default one is created (and the machine probed) at the first score. */
  sandbox?: Sandbox | Promise<Sandbox>;
  /** Sees every test's result, e.g. to log why programs fail. */
  onResults?: (results: TestResult[], input: RewardInput) => void;
}

/**
 * DeepSeek-R1's rule-based reward for programming tasks: the program in the answer is run against the
 * prompt's test cases (`prompt.answer = { tests: [{ input, output }] }`) in a sandbox (./sandbox.ts),
 * and the reward is the fraction of tests passed; 0 when the completion has no program.
 *
 * It rejects (the reward stage records a failure, the value is null) when the prompt has no valid test
 * cases, when the sandbox refuses to run because a required protection is unavailable here, and when
 * the AbortSignal fires, which kills the running programs. Set the reward stage's timeout above
 * tests x `timeoutMs` / `concurrency`.
 */
export function codeReward(options: CodeRewardOptions = {}): RewardFunction {
  const { sandbox: given, onResults, ...sandboxOptions } = options;
  let sandbox: Promise<Sandbox> | undefined = given ? Promise.resolve(given) : undefined;
  return {
    name: 'code',
    score: async (input, signal) => {
      const answer = CodeAnswer.safeParse(input.prompt.answer);
      if (!answer.success) {
        throw new Error(
          `code reward: prompt ${input.prompt.id} has no test cases ({ tests: [{ input, output }] }): ` +
            z.prettifyError(answer.error),
        );
      }
      const program = extractProgram(input.completion);
      if (program === null) return 0;
      // A sandbox that could not be made is tried again at the next score, not refused for good.
      sandbox ??= Sandbox.create(sandboxOptions).catch((error: unknown) => {
        sandbox = undefined;
        throw error;
      });
      const results = await (await sandbox).run(program, answer.data.tests, signal);
      onResults?.(results, input);
      return results.filter((r) => r.status === 'passed').length / results.length;
    },
  };
}
