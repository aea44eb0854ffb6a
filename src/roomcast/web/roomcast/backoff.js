// How long to wait before each reconnect.

/** Exponential backoff with full jitter: attempt n waits uniform(0, min(max, initial * 2^n)). */
export class Backoff {
  constructor({ initial = 100, maximum = 10000, multiplier = 2 } = {}) {
    Object.assign(this, { initial, maximum, multiplier, attempts: 0 });
  }
  nextDelay() {
    const cap = Math.min(this.maximum, this.initial * this.multiplier ** Math.min(this.attempts, 64));
    this.attempts += 1;
    return Math.random() * cap;
  }
  reset() {
    this.attempts = 0;
  }
}
