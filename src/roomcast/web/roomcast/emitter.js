// The listener lists of a client and its channels.

/** A small event emitter: `on(name, fn)` returns a function that removes the listener. */
export class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name)?.delete(fn);
  }
  emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (error) {
        console.error(`roomcast: a "${name}" listener failed`, error);
      }
    }
  }
}
