/**
 * @module
 * Injected randomness. Policies take a {@linkcode RandomSource} instead of calling `Math.random`
 * themselves so that tests can replay exact sequences with {@linkcode mulberry32}.
 */

/**
 * A source of uniformly distributed numbers in `[0, 1)`, the contract of `Math.random`.
 * Returning exactly 1 would index past the end of a candidate list.
 */
export type RandomSource = () => number;

/**
 * A small, fast, seeded PRNG (Tommy Ettinger's mulberry32: 32 bits of state, a Weyl sequence
 * passed through an xorshift-multiply mixer). Good enough for load spreading and tests; not for
 * anything secret.
 *
 * @param seed Any number; only its low 32 bits are used.
 * @returns A {@linkcode RandomSource} that repeats the same sequence for the same seed.
 */
export function mulberry32(seed: number): RandomSource {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), state | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}
