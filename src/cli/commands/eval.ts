import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { isCheckpoint } from '../../policy/checkpoint.ts';
import { pairedBootstrap } from '../../eval/paired.ts';
import { BACKEND_REQUESTS, type BackendRequest } from '../../policy/backendRequest.ts';
import { anyInt, nonNegativeNumber, positiveInt, probability } from '../options.ts';
import { defaultRunDir, loadAnyPipeline, type Pipeline } from '../pipelines.ts';

export function registerEvalCommand(program: Command): void {
  program
    .command('eval')
    .description(
      "Evaluate a checkpoint on a pipeline's held-out prompts the R1 way: k samples per question, " +
        'pass@1 averaged over them, unbiased pass@k, cons@k majority voting',
    )
    .argument('<pipeline>', 'pipeline name (pipelines/<name>.ts) or path to a topology or recipe module')
    .option(
      '--checkpoint <dir>',
      "checkpoint directory (default: runs/<pipeline>/checkpoint; for a recipe, its last stage's with one: runs/<recipe>/<stage>/checkpoint)",
    )
    .addOption(
      new Option('--backend <backend>', 'the tfjs backend (auto: the best one installed)')
        .choices(BACKEND_REQUESTS)
        .default('auto'),
    )
    .option(
      '--prompts <n>',
      'held-out prompts to use, at most the held-out set (default: the topology eval.prompts)',
      positiveInt,
    )
    .option('-k, --samples <k>', 'samples per prompt (default: the topology eval.k)', positiveInt)
    .option(
      '--temperature <t>',
      'sampling temperature, 0 for greedy decoding (then the k samples agree) (default: the topology eval.temperature)',
      nonNegativeNumber,
    )
    .option('--top-p <p>', 'nucleus sampling (default: the topology eval.topP)', probability)
    .option(
      '--seed <n>',
      "sampling seed (a single run evaluates step s with the topology seed + s; a recipe's eval stage with the topology seed + 1000 x the stage's position, counted from 1)",
      anyInt,
      0,
    )
    .addOption(
      new Option('--language <language>', 'target language of the language-consistency score')
        .choices(['en', 'zh'])
        .default('en'),
    )
    .option(
      '--against <dir>',
      'also evaluate this checkpoint (e.g. the base model) on the same prompts and seed, and compare ' +
        'pass@1 prompt by prompt (paired bootstrap, 95% interval)',
    )
    .option('--json', 'print the result as JSON')
    .action(
      async (
        name: string,
        opts: {
          checkpoint?: string;
          backend: BackendRequest;
          prompts?: number;
          samples?: number;
          temperature?: number;
          topP?: number;
          seed: number;
          language: 'en' | 'zh';
          against?: string;
          json?: boolean;
        },
        command: Command,
      ) => {
        const pipeline = await loadAnyPipeline(name);
        const topology = pipeline.kind === 'topology' ? pipeline.topology : pipeline.recipe.topology;
        const checkpoint = opts.checkpoint ?? defaultCheckpoint(pipeline, command);
        if (opts.checkpoint === undefined && !isCheckpoint(checkpoint))
          command.error(
            `no checkpoint at ${checkpoint} yet: run the pipeline (rxrl run ${name}) or pass --checkpoint <dir>`,
          );
        for (const [flag, dir] of [
          ['--checkpoint', opts.checkpoint],
          ['--against', opts.against],
        ] as const)
          if (dir !== undefined && !isCheckpoint(dir))
            command.error(
              `${flag} ${dir}: ${existsSync(dir) ? 'not a checkpoint directory (no manifest.json in it)' : 'no such directory'}`,
            );
        const settings = {
          prompts: opts.prompts ?? topology.eval.prompts,
          k: opts.samples ?? topology.eval.k,
          temperature: opts.temperature ?? topology.eval.temperature,
          topP: opts.topP ?? topology.eval.topP,
          maxNewTokens: topology.sampling.maxNewTokens,
          language: opts.language,
        };
        // Loaded here so that commands which need no tfjs start without it.
        const { evaluateCheckpoint } = await import('../../run/evaluate.ts');
        const evaluateAt = (dir: string) =>
          evaluateCheckpoint({ topology, backend: opts.backend, checkpoint: dir, settings, seed: opts.seed });
        const result = await evaluateAt(checkpoint);
        const baseline = opts.against ? await evaluateAt(opts.against) : undefined;
        const against = baseline && {
          checkpoint: opts.against!,
          pass1: baseline.pass1,
          comparison: pairedBootstrap(baseline.pass1ByQuestion, result.pass1ByQuestion),
        };
        if (opts.json) {
          console.log(JSON.stringify({ checkpoint, settings, ...result, ...(against ? { against } : {}) }));
          return;
        }
        const f = (x: number) => x.toFixed(3);
        console.log(
          `${topology.name} @ policy version ${result.policyVersion} (${checkpoint}, ${result.backend}): ` +
            `${result.questions} held-out prompts x ${result.samplesPerQuestion} samples, ` +
            `temperature ${settings.temperature}, top-p ${settings.topP}`,
        );
        for (const [k, v] of Object.entries(result.passAtK)) console.log(`  pass@${k.padEnd(4)} ${f(v)}`);
        console.log(`  cons@${String(result.samplesPerQuestion).padEnd(4)} ${f(result.consAtK)}`);
        console.log(`  format   ${f(result.formatRate)}`);
        console.log(`  length   ${result.meanLength.toFixed(1)} tokens`);
        if (result.languageConsistency !== null)
          console.log(
            `  language ${f(result.languageConsistency)} (share of chain-of-thought words in ${opts.language === 'zh' ? 'Chinese' : 'English'}, ${f(result.languageScored)} of the samples have words)`,
          );
        if (result.stepAccuracy !== null)
          console.log(
            `  steps    ${f(result.stepAccuracy)} (share of the chain-of-thought arithmetic steps that are right)`,
          );
        if (against) {
          const c = against.comparison;
          const signed = (x: number) => `${x >= 0 ? '+' : ''}${f(x)}`;
          console.log(
            `against ${against.checkpoint}: pass@1 ${f(against.pass1)} -> ${f(result.pass1)}, ` +
              `${signed(c.difference)} (95% interval ${signed(c.low)} to ${signed(c.high)}; paired bootstrap over ` +
              `${c.questions} prompts, ${c.resamples} resamples, ${f(c.atOrBelowZero)} of them at or below 0); ` +
              `${c.better} prompts rose, ${c.worse} fell, ${c.same} stayed`,
          );
        }
      },
    );
}

/**
 * Where a pipeline's run leaves its checkpoint: for a recipe, its `final` stage's, or else the last of
 * its stages that left one.
 */
function defaultCheckpoint(pipeline: Pipeline, command: Command): string {
  if (pipeline.kind === 'topology') return join(defaultRunDir(pipeline.topology.name), 'checkpoint');
  const { recipe } = pipeline;
  if (recipe.final !== undefined) {
    const dir = join(defaultRunDir(recipe.name), recipe.final, 'checkpoint');
    if (!isCheckpoint(dir))
      command.error(
        `${recipe.name}'s final stage ${recipe.final} has left no checkpoint under ${defaultRunDir(recipe.name)} yet: run it (rxrl run ${recipe.name}) or pass --checkpoint`,
      );
    return dir;
  }
  const dirs = recipe.stages.map((stage) => join(defaultRunDir(recipe.name), stage.name, 'checkpoint'));
  const last = dirs.reverse().find((dir) => isCheckpoint(dir));
  if (last === undefined)
    command.error(
      `${recipe.name} is a recipe and none of its stages has left a checkpoint under ${defaultRunDir(recipe.name)} yet: run it (rxrl run ${recipe.name}) or pass --checkpoint`,
    );
  return last;
}
