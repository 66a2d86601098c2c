#!/usr/bin/env python3
"""turns_count.py — a count of the deterministic backward's turns (bwd_sm90.cuh, Sm90BwdWalk), no GPU needed.

The persistent grid runs S slots x P lanes; slot c / P walks the (batch, KV head) pairs c / P, + S, ...; lane c % P
the pair's key blocks congruent to (lane + pair) mod P, highest first; per key block, its visible query blocks in
order, one step each. A row block of dq_accum takes its additions in descending key-block order (a turn counter).
Modelled per CTA: the consumers take T per step and store its dQ into the one dQ tile once the writer has released
the previous step's; the writer waits for the step's turn, issues the reductions (read after `read`, landed after
`land`) and passes the turn on, which the next key block sees `hand` later. Two writers:
  passed:  the tile is released and the turn passed once the reductions have landed (sixteenth session's writer);
  held:    the tile is released once read; the turn is passed after the next step's reductions are issued, and before
           any wait for a turn (the writer never waits while holding one).
Prints, per shape and lane count, the time of the grid's steps spread evenly (steps x T / CTAs) over the counted time:
1.0 = neither the turns nor the uneven causal walks cost anything (the normal grid comes close to it).

Usage: python3 scripts/perf/turns_count.py [--step 2.9] [--land 3.5] [--hand 1.0] [--read 0.5] [--sms 132]
       [--walk rotate|zigzag]
"""
import argparse


def lane_blocks(walk, lanes, lane, pair, key_blocks):
    """The key blocks lane `lane` takes of a pair, in the order it walks them (highest first)."""
    if walk == "zigzag":  # blocks lane and 2 lanes - 1 - lane of every 2 lanes: a heavy and a light one under a causal mask
        return [nb for nb in range(key_blocks - 1, -1, -1) if nb % (2 * lanes) in (lane, 2 * lanes - 1 - lane)]
    first = (lane + pair) % lanes  # the kernel's walk: the residue turns with the pair
    return list(range(first + (key_blocks - 1 - first) // lanes * lanes, -1, -lanes)) if key_blocks > first else []


def count(pairs, key_blocks, query_blocks, lanes, slots, causal, held, step, read, land, hand, walk="rotate", bn=128, bm=64):
    def rows(nb):  # the query blocks key block nb sees (bottom-right causal with sq = sk)
        return range((nb * bn) // bm if causal else 0, query_blocks)

    def last_seeing(m):  # the highest key block that sees query block m
        return min(key_blocks - 1, ((m + 1) * bm - 1) // bn) if causal else key_blocks - 1

    walks = []
    for cta in range(slots * lanes):
        items = []
        for pair in range(cta // lanes, pairs, slots):
            items += [(pair, nb) for nb in lane_blocks(walk, lanes, cta % lanes, pair, key_blocks)]
        walks.append([(pair, nb, m) for pair, nb in items for m in rows(nb)])

    landed = {}  # (pair, key block, row block) -> when its turn was passed
    at = [0] * len(walks)  # next step of each CTA
    consumer = [0.0] * len(walks)  # when the consumers stored the last dQ
    tile_free = [0.0] * len(walks)
    writer = [0.0] * len(walks)
    holding = [None] * len(walks)  # held: (item, when it landed)
    end = 0.0

    def pass_held(c, now):
        item, when = holding[c]
        landed[item] = max(when, now)
        holding[c] = None
        return landed[item]

    moved = True
    while moved:  # each CTA runs until its next turn is not yet passed; repeat until every CTA is done
        moved = False
        for c, steps in enumerate(walks):
            while at[c] < len(steps):
                pair, nb, m = steps[at[c]]
                stored = max(consumer[c] + step, tile_free[c])
                ready = max(stored, writer[c])
                turn = 0.0
                if nb < last_seeing(m):
                    if (pair, nb + 1, m) not in landed:
                        if holding[c]:
                            writer[c] = pass_held(c, ready)
                            moved = True
                        break
                    turn = landed[(pair, nb + 1, m)] + hand
                if held and holding[c] and turn > ready:
                    ready = pass_held(c, ready)
                start = max(ready, turn)
                if held:
                    tile_free[c] = writer[c] = start + read
                    if holding[c]:
                        writer[c] = pass_held(c, start + read)
                    holding[c] = ((pair, nb, m), start + land)
                else:
                    tile_free[c] = writer[c] = landed[(pair, nb, m)] = start + land
                consumer[c] = stored
                end = max(end, start + land)
                at[c] += 1
                moved = True
            if at[c] == len(steps) and holding[c]:
                end = max(end, pass_held(c, writer[c]))
                moved = True
    assert all(at[c] == len(steps) for c, steps in enumerate(walks)), "a turn was never passed"
    return sum(len(w) for w in walks) * step / len(walks) / end


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", type=float, default=2.9, help="consumer time per step, us (hdim 128, 64 queries)")
    ap.add_argument("--land", type=float, default=3.5, help="from issue to landed reductions, us")
    ap.add_argument("--hand", type=float, default=1.0, help="from a passed turn to the next key block seeing it, us")
    ap.add_argument("--read", type=float, default=0.5, help="from issue to the tile read, us")
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--walk", choices=("rotate", "zigzag"), default="rotate",
                    help="rotate: the kernel's lanes (residue (lane + pair) mod lanes); zigzag: lane r takes blocks r and 2 lanes - 1 - r")
    args = ap.parse_args()
    print("shape (16k tokens, 16 heads)  " + "  ".join(f"{lanes:2d} lanes passed / held" for lanes in (16, 8, 4)))
    for name, seqlen, pairs in (("2k", 2048, 128), ("8k", 8192, 32)):
        for causal in (False, True):
            cells = []
            for lanes in (16, 8, 4):
                slots = min(pairs, args.sms // lanes)
                pair_of = [count(pairs, seqlen // 128, seqlen // 64, lanes, slots, causal, held, args.step, args.read,
                                 args.land, args.hand, args.walk) for held in (False, True)]
                cells.append(f"{pair_of[0]:17.2f} / {pair_of[1]:4.2f}")
            print(f"{name} {'causal' if causal else 'full  '}" + " " * 20 + "  ".join(cells))


if __name__ == "__main__":
    main()
