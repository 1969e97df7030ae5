module fleetgate/tools/wire-golden

go 1.26.8

require github.com/google/flatbuffers v25.2.10+incompatible // indirect
