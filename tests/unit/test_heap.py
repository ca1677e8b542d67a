import gc

from serving.heap import GcPauses, freeze_heap


def test_a_frozen_heap_is_left_out_of_full_collections_and_passes_are_counted():
    pauses = GcPauses()
    try:
        before = pauses.full_passes
        loaded = [[0]]  # alive at the freeze, as a loaded model is
        freeze_heap()
        assert pauses.full_passes == before + 1  # freeze_heap's own collection
        created = [[1]]  # what a request creates afterwards
        gc.collect(2)
        assert pauses.full_passes == before + 2 and pauses.longest_s > 0
        walked = {id(o) for o in gc.get_objects(generation=2)}
        assert id(created) in walked and id(loaded) not in walked
    finally:
        pauses.close()
        gc.unfreeze()
