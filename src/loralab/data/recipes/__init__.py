"""Recipes: records written from checkable items rather than read from files.

  self-correction  traces of thinking events (wrong -> check -> correction, restart,
                   insight, right first time), verified        (selfcorrect.py)
  epistemic        one reasoning style per folder on the same items (epistemic.py)
  anchor           verified arithmetic / logic items for replay + KL (epistemic.py)

Every recipe writes a records folder like any data stage (records.jsonl,
quarantine.jsonl, data_card.json, counts reconciled, atomic) whose card carries the
adapter `role` the records train.
"""
