"""Test helpers shared by the engine's example tests and its state machines."""


class PushInside:
    """A window whose `method` (frozen_begin: a copy-mode checkpoint's copy;
    compact_begin: a compaction's) runs a push right after it, as another
    thread's push would land while the engine lock is free."""

    def __init__(self, view, method, push):
        self.view, self._method, self._push = view, method, push

    def __getattr__(self, name):
        if name != self._method:
            return getattr(self.view, name)

        def copying(track):
            begun = getattr(self.view, name)(track)
            self._push()
            return begun
        return copying
