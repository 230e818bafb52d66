/**
 * @module
 * Comparing secrets (tokens, cookie MACs) in time that does not depend on where they differ, so
 * that a client cannot find a valid secret character by character from response timings.
 */

/**
 * Whether `given` equals `secret`, looking at every character of `secret` whatever `given` is
 * (only the secret's length shows in the timing).
 */
export function constantTimeEqual(given: string, secret: string): boolean {
  let difference = given.length ^ secret.length;
  for (let i = 0; i < secret.length; i++) {
    difference |= (given.charCodeAt(i) || 0) ^ secret.charCodeAt(i);
  }
  return difference === 0;
}
