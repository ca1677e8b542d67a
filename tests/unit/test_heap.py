import gc

from serving.heap import GcPauses, freeze_heap


def test_a_frozen_heap_is_left_out_of_full_collections_and_passes_are_counted():
    pauses = GcPauses()
    try:
        before = pauses.passes[2]
        loaded = [[0]]  # alive at the freeze, as a loaded model is
        freeze_heap()
        # freeze_heap's own collection is not a pause of the serving replica.
        assert pauses.passes[2] == before and pauses.freeze_passes == 1
        created = [[1]]  # what a request creates afterwards
        gc.collect(2)
        assert pauses.passes[2] == before + 1 and pauses.longest_s[2] > 0
        walked = {id(o) for o in gc.get_objects(generation=2)}
        assert id(created) in walked and id(loaded) not in walked
    finally:
        pauses.close()
        gc.unfreeze()


def test_passes_are_counted_by_generation():
    pauses = GcPauses()
    gc.disable()  # only the passes asked for below
    try:
        young = list(pauses.passes)
        gc.collect(0)
        gc.collect(1)
        assert pauses.passes[0] == young[0] + 1 and pauses.passes[1] == young[1] + 1
        assert pauses.passes[2] == young[2]
    finally:
        gc.enable()
        pauses.close()


def test_each_pause_is_handed_over_once_and_the_oldest_go_first_past_the_cap():
    pauses = GcPauses(keep=2)
    gc.disable()  # only the passes asked for below
    try:
        pauses.drain()
        for gen in (0, 1, 2):
            gc.collect(gen)
        got = pauses.drain()
        assert [g for g, _ in got] == [1, 2] and all(s >= 0 for _, s in got)
        assert pauses.drain() == []
    finally:
        gc.enable()
        pauses.close()
