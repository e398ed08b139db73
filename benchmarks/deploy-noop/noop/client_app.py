"""The no-op ClientApp: reply to a train message with the arrays it carried (flwr and numpy only)."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    content = RecordDict({"arrays": msg.content.array_records["arrays"], "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, reply_to=msg)
