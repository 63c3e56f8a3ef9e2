/**
 * A seeded pseudo-random generator in plain JS, so that initialisation and sampling depend on
 * the seed alone, not on a backend's RNG (tf.multinomial's seeding differs between backends).
 *
 * sfc32 (Chris Doty-Humphrey's Small Fast Counting generator, as in PractRand), its 128-bit
 * state filled from the seed by splitmix32 so that nearby seeds give unrelated streams.
 */
export type Uniform = () => number;

/** Returns a generator of floats uniform in [0, 1), a pure function of `seed`. */
export function seededUniform(seed: number): Uniform {
  let s = seed >>> 0;
  const splitmix32 = (): number => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix32();
  let b = splitmix32();
  let c = splitmix32();
  let d = splitmix32();
  return () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) >>> 0;
    return t / 4294967296;
  };
}

/** Fills an array with normal(0, std) draws (Box-Muller). */
export function normalArray(size: number, std: number, uniform: Uniform): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i += 2) {
    const radius = std * Math.sqrt(-2 * Math.log(1 - uniform()));
    const angle = 2 * Math.PI * uniform();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < size) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}

/** An integer uniform in [min, max]. */
export function randomInt(uniform: Uniform, min: number, max: number): number {
  return min + Math.floor(uniform() * (max - min + 1));
}
