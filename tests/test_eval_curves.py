from afr.eval.curves import StartScore


def test_the_start_is_scored_once_and_every_other_step_count_each_time():
    calls = []

    def score(value):
        return lambda: calls.append(value) or {"auc": value}

    start = StartScore()
    assert start.at(0, score(0.5)) == {"auc": 0.5}
    assert start.at(3, score(0.7)) == {"auc": 0.7}
    # another k of the run: its 0-step score is the kept one (a different model would not be scored)
    again = start.at(0, score(0.9))
    assert again == {"auc": 0.5} and calls == [0.5, 0.7]
    again["auc"] = 0.0  # a copy: a caller's edit does not reach the kept metrics
    assert start.at(0, score(0.9)) == {"auc": 0.5}
    assert start.at(3, score(0.8)) == {"auc": 0.8} and calls == [0.5, 0.7, 0.8]
