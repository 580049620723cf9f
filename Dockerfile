# syntax=docker/dockerfile:1
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /thanksio-proxy .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /thanksio-proxy /thanksio-proxy
USER nonroot:nonroot
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s CMD ["/thanksio-proxy", "healthcheck"]
ENTRYPOINT ["/thanksio-proxy"]
