"""prunelab inside the trainers researchers already use; each module is an optional extra, imported only
when used (``import prunelab`` imports none of them):

``prunelab.integrations.huggingface``
    :class:`~prunelab.integrations.huggingface.MaskCallback`, a ``transformers.TrainerCallback``, and the
    ``save_pretrained`` / ``from_pretrained`` round trip with the mask beside the weights
    (``pip install prunelab[huggingface]``).
``prunelab.integrations.lightning``
    :class:`~prunelab.integrations.lightning.MaskCallback`, a ``lightning.pytorch.Callback``
    (``pip install prunelab[lightning]``).

Both apply a fixed :class:`prunelab.Mask` when training begins, or drive a :class:`prunelab.MaskSchedule`
(:class:`prunelab.GradualMagnitude`, :class:`prunelab.SET`, :class:`prunelab.RigL`) through
:class:`prunelab.MaskUpdates` after every optimizer step, and keep the mask with every checkpoint.
"""
