"""The zero-shot predict wire format, shared by the batchinfer client and the model server.

One module per concept: :mod:`batchinfer_protocol.zero_shot` holds the request and response
shapes, the defaults and the parameter rules, so the client can refuse at settings load what the
server would refuse at request time; :mod:`batchinfer_protocol.predict_request` decodes a request
body on the server into the same types the client encoded it from; and
:mod:`batchinfer_protocol.outcomes` says how a predict call fails.
"""
