/**
 * Tokenizers: text <-> token ids. The R1 template's tags (<think>, </think>, <answer>,
 * </answer>) are single special tokens, so format rewards and masks can find them by id and the
 * model emits each in one step.
 *
 * Only a character tokenizer exists today; a BPE tokenizer would implement the same interface
 * and add its own `TokenizerSpec` variant (merges and vocabulary), so checkpoints can rebuild it.
 */
import { z } from 'zod';

/** Text of the reasoning and answer tags of the DeepSeek-R1 template. */
export const TAGS = {
  thinkOpen: '<think>',
  thinkClose: '</think>',
  answerOpen: '<answer>',
  answerClose: '</answer>',
} as const;
export type TagName = keyof typeof TAGS;

export interface Tokenizer {
  readonly vocabSize: number;
  readonly padId: number;
  readonly eosId: number;
  readonly bosId?: number;
  /** Id of each R1 tag; `encode` maps the tag's text to it. */
  readonly tagIds: Readonly<Record<TagName, number>>;
  encode(text: string): number[];
  /** Inverse of `encode`; pad, BOS and EOS decode to nothing. */
  decode(ids: readonly number[]): string;
  /** Everything needed to rebuild this tokenizer (saved in checkpoints). */
  spec(): TokenizerSpec;
}

/** What a checkpoint stores to rebuild a tokenizer; one variant per kind of tokenizer. */
export const TokenizerSpec = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('char'), alphabet: z.string().min(1) }).strict(),
]);
export type TokenizerSpec = z.infer<typeof TokenizerSpec>;

/**
 * Default alphabet: arithmetic and countdown prompts, the R1 template's prose, and newline.
 * '<' and '>' stay plain characters (comparisons); the tags are matched before them.
 */
export const DEFAULT_ALPHABET =
  '0123456789+-*/=()[]{}<>.,:;?!\'"%^_&|#$@~` \n' +
  'abcdefghijklmnopqrstuvwxyz' +
  'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

/** Special ids come first, in this order; characters follow from CHAR_BASE. */
const SPECIALS: readonly string[] = ['<pad>', '<eos>', '<bos>', ...Object.values(TAGS)];
const CHAR_BASE = SPECIALS.length;
const TAG_ORDER = Object.entries(TAGS) as [TagName, string][];

/** One token per character of `alphabet` (by code point), plus pad, EOS, BOS and the four tags. */
export class CharTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly padId = 0;
  readonly eosId = 1;
  readonly bosId = 2;
  readonly tagIds: Readonly<Record<TagName, number>>;
  private readonly alphabet: string;
  private readonly idOf = new Map<string, number>();
  private readonly textOf: string[];

  constructor(alphabet: string = DEFAULT_ALPHABET) {
    const chars = Array.from(alphabet);
    for (const [i, ch] of chars.entries()) {
      if (this.idOf.has(ch)) throw new Error(`CharTokenizer: alphabet repeats ${describe(ch)} (index ${i})`);
      this.idOf.set(ch, CHAR_BASE + i);
    }
    this.alphabet = alphabet;
    this.vocabSize = CHAR_BASE + chars.length;
    this.tagIds = Object.fromEntries(
      TAG_ORDER.map(([name, text]) => [name, SPECIALS.indexOf(text)]),
    ) as Record<TagName, number>;
    const tagTexts = new Set<string>(Object.values(TAGS));
    this.textOf = [...SPECIALS.map((s) => (tagTexts.has(s) ? s : '')), ...chars];
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    let i = 0;
    while (i < text.length) {
      const tag = text[i] === '<' ? TAG_ORDER.find(([, t]) => text.startsWith(t, i)) : undefined;
      if (tag) {
        ids.push(this.tagIds[tag[0]]);
        i += tag[1].length;
        continue;
      }
      const ch = String.fromCodePoint(text.codePointAt(i)!);
      const id = this.idOf.get(ch);
      if (id === undefined) {
        const context = JSON.stringify(text.slice(Math.max(0, i - 10), i + 10));
        throw new Error(
          `CharTokenizer: unknown character ${describe(ch)} at position ${i} (near ${context}); ` +
            `add it to the alphabet or remove it from the text`,
        );
      }
      ids.push(id);
      i += ch.length;
    }
    return ids;
  }

  decode(ids: readonly number[]): string {
    return ids
      .map((id, i) => {
        const text = this.textOf[id];
        if (text === undefined)
          throw new Error(
            `CharTokenizer: id ${id} at position ${i} is outside the vocabulary (${this.vocabSize})`,
          );
        return text;
      })
      .join('');
  }

  spec(): TokenizerSpec {
    return { kind: 'char', alphabet: this.alphabet };
  }
}

/** Rebuilds a tokenizer from its spec (as saved in a checkpoint). */
export function tokenizerFromSpec(spec: TokenizerSpec): Tokenizer {
  switch (spec.kind) {
    case 'char':
      return new CharTokenizer(spec.alphabet);
  }
}

function describe(ch: string): string {
  const code = ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
  return `${JSON.stringify(ch)} (U+${code})`;
}
