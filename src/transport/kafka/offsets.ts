/**
 * Which offsets of one partition downstream has acked, and so how far the consumer group may commit:
 * up to the first record that is not acked yet, never past it (acks may come out of order).
 *
 * ```
 * delivered: 10 11 12 13 14
 * acked:     10 11    13        -> commit 12 (the next offset to read); 13 waits for 12
 * ```
 */
export class PartitionAcks {
  // Offsets in delivery order (increasing within a partition; gaps where the log has them).
  private readonly delivered: number[] = [];
  private head = 0;
  private readonly acked = new Set<number>();
  /** The offset to commit: the first one not acked yet; undefined until a record is acked. */
  committable: number | undefined;

  deliver(offset: number): void {
    this.delivered.push(offset);
  }

  /** Marks an offset acked; true when that moved the committable offset forward. */
  ack(offset: number): boolean {
    this.acked.add(offset);
    let advanced = false;
    while (this.head < this.delivered.length && this.acked.delete(this.delivered[this.head]!)) {
      this.committable = this.delivered[this.head]! + 1;
      this.head++;
      advanced = true;
    }
    // Drop the acked prefix now and then, not on every ack: splicing is linear in what is left.
    if (this.head > 1024 && this.head * 2 > this.delivered.length) {
      this.delivered.splice(0, this.head);
      this.head = 0;
    }
    return advanced;
  }
}
