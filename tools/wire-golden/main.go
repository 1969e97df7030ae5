// Prints the golden ack / error-reply bytes that src/wire/envelope.rs tests against, built with
// the Go flatbuffers library in the order the reference server uses. Run: cd tools/wire-golden && go run .
package main

import (
	"encoding/hex"
	"fmt"

	flatbuffers "github.com/google/flatbuffers/go"
)

// envelope mirrors the reference builder order: vectors txid, topic, message id, then the table.
func envelope(b *flatbuffers.Builder, txid, topic []byte, msg flatbuffers.UOffsetT, messageID []byte, msgType byte) []byte {
	t := b.CreateByteString(txid)
	tp := b.CreateByteString(topic)
	m := b.CreateByteString(messageID)
	b.StartObject(5)
	b.PrependUOffsetTSlot(0, t, 0)
	b.PrependUOffsetTSlot(1, tp, 0)
	b.PrependByteSlot(2, msgType, 0)
	b.PrependUOffsetTSlot(3, msg, 0)
	b.PrependUOffsetTSlot(4, m, 0)
	root := b.EndObject()
	b.Finish(root)
	return b.Bytes[b.Head():]
}

func main() {
	b := flatbuffers.NewBuilder(0)
	fmt.Println("ack", hex.EncodeToString(envelope(b, []byte("4f1c2a90-0001"), []byte("V"), b.CreateByteString([]byte{}), []byte("m-1"), 5)))
	b = flatbuffers.NewBuilder(0)
	s := b.CreateByteString([]byte{})
	p := b.CreateByteString([]byte("incorrect message format"))
	dt := b.CreateByteString([]byte{})
	di := b.CreateByteString([]byte{})
	b.StartObject(6)
	b.PrependUOffsetTSlot(1, s, 0)
	b.PrependUint32Slot(0, 0, 0)
	b.PrependUOffsetTSlot(2, p, 0)
	b.PrependUOffsetTSlot(3, dt, 0)
	b.PrependUOffsetTSlot(4, di, 0)
	b.PrependUint64Slot(5, 0, 0)
	st := b.EndObject()
	fmt.Println("err", hex.EncodeToString(envelope(b, []byte("4f1c2a90-0001"), []byte{}, st, []byte{}, 4)))
}
