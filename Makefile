.PHONY: test proto lint
test:
	go test -race -count=1 ./...
proto:
	go install github.com/bufbuild/buf/cmd/buf@v1.75.0
	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@latest
	PATH="$$(go env GOPATH)/bin:$$PATH" buf lint
	PATH="$$(go env GOPATH)/bin:$$PATH" buf generate
