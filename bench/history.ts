/** Times from a workflow's history events (protobuf timestamps) for the benches. */
export interface Ts {
  seconds?: { toNumber(): number } | number | null;
  nanos?: number | null;
}

/** A protobuf timestamp as epoch milliseconds (NaN when absent). */
export const tsMs = (t: Ts | null | undefined): number => {
  if (!t) return NaN;
  const s = typeof t.seconds === 'number' ? t.seconds : (t.seconds?.toNumber() ?? 0);
  return s * 1000 + (t.nanos ?? 0) / 1e6;
};
