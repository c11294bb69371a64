/** An ObjectStore that hands every call to another: tests override the calls they watch or delay. */
import type { ObjectStore, PutOptions } from '../../src/drivers/backup/stores/store.js';

export class DelegatingStore implements ObjectStore {
  constructor(readonly inner: ObjectStore) {}
  get location() {
    return this.inner.location;
  }
  ready() {
    return this.inner.ready();
  }
  put(key: string, body: Buffer, opts?: PutOptions) {
    return this.inner.put(key, body, opts);
  }
  get(key: string) {
    return this.inner.get(key);
  }
  getInto<B extends ArrayBufferLike>(key: string, alloc: (n: number) => B) {
    return this.inner.getInto(key, alloc);
  }
  exists(key: string) {
    return this.inner.exists(key);
  }
  sizeOf(key: string) {
    return this.inner.sizeOf(key);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  list(prefix: string) {
    return this.inner.list(prefix);
  }
}
