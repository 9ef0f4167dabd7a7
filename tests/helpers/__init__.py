"""Helpers the tests share: code, not fixtures (fixtures live in the conftest.py files). Tests
import helpers from here only, never from a conftest.py or from another test file.

* :mod:`.processes`: the repository root, the interpreter, the quiet environment every child
  process gets, the training CLI, a tool that is missing, a process's memory.
* :mod:`.servers`: a real ``python -m service`` on a free port, waited for until ready, stopped;
  whether it is still healthy; what its ``/metrics`` says.
* :mod:`.clients`: talking to a live server the way hostile or broken clients do (raw sockets,
  hand-made HTTP heads and multipart bodies).
* :mod:`.hostile`: the limits of the server the hostile-input tests share.
* :mod:`.images`: images built in memory: a real handwritten digit as PNG (:func:`.digit_png`),
  noise, solid colours, and the odd, broken and hostile files the service must refuse.
* :mod:`.answers`: a refusal of the serving core or the decoder as the HTTP answer the service's
  edge gives it (status, reason, ``Retry-After``).
* :mod:`.models`: model versions without training (published stand-ins, fake loaded models) and
  republished copies of a trained one.
* :mod:`.stress_model`: the slow VGG-16 with an injected fault the reliability tests serve, and
  that server's settings.
* :mod:`.browser`: what the page tests need besides the browser fixtures.
* :mod:`.feedback`: captured predictions built in memory, a capture writer's reports recorded, a
  clock the test moves, and the files a folder holds.
* :mod:`.ops`: the monitoring files, the series the service exports, the dashboard's queries and
  the metric names and route selectors in PromQL.
"""
