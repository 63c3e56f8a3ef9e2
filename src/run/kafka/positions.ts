/**
 * What the learner has consumed of `<run>.scored`, per partition: the offset a restart reads from (the
 * lowest offset of a sample whose group is neither trained nor dropped yet) and the groups settled past it,
 * whose samples the restart reads again and must skip.
 *
 * ```
 * delivered: 10(a) 11(b) 12(a) 13(c)     a trained, c dropped, b still open
 * position:  11                           groups past it: a, c (their samples at 12 and 13 are read again)
 * ```
 */
export class ConsumedPositions {
  private readonly partitions = new Map<number, PartitionPositions>();

  /** Starts from a checkpoint's positions (partition -> offset), or from nothing. */
  constructor(initial: Readonly<Record<string, number>> = {}) {
    for (const [partition, offset] of Object.entries(initial)) {
      this.partition(Number(partition)).floor = offset;
    }
  }

  delivered(partition: number, offset: number): void {
    const p = this.partition(partition);
    p.open.add(offset);
    p.settled.delete(offset);
    if (offset + 1 > p.next) p.next = offset + 1;
  }

  /** The sample at this offset, of group `groupId`, needs nothing more: its group was trained or dropped. */
  settled(partition: number, offset: number, groupId: string): void {
    const p = this.partition(partition);
    if (!p.open.delete(offset)) return;
    p.settled.set(offset, groupId);
  }

  /** Where a restart reads each partition from. */
  positions(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [partition, p] of this.partitions) out[partition] = this.position(p);
    return out;
  }

  /**
   * Ids of the groups with a settled sample at or past the restart position: a restart reads those samples
   * again and must know their groups are done. Forgets settled samples below the position.
   */
  settledPast(): Set<string> {
    const ids = new Set<string>();
    for (const p of this.partitions.values()) {
      const position = this.position(p);
      for (const [offset, groupId] of p.settled) {
        if (offset < position) p.settled.delete(offset);
        else ids.add(groupId);
      }
    }
    return ids;
  }

  /** Delivered samples not settled yet. */
  get open(): number {
    let n = 0;
    for (const p of this.partitions.values()) n += p.open.size;
    return n;
  }

  private position(p: PartitionPositions): number {
    let lowest = Infinity;
    for (const offset of p.open) if (offset < lowest) lowest = offset;
    return lowest !== Infinity ? lowest : Math.max(p.floor, p.next);
  }

  private partition(partition: number): PartitionPositions {
    let p = this.partitions.get(partition);
    if (!p) this.partitions.set(partition, (p = { floor: 0, next: 0, open: new Set(), settled: new Map() }));
    return p;
  }
}

interface PartitionPositions {
  /** The position this partition had when the learner started (nothing below it is read). */
  floor: number;
  /** Past the highest offset delivered. */
  next: number;
  open: Set<number>;
  settled: Map<number, string>;
}
