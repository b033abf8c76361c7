module github.com/zlayer/zlayer-overlayd

go 1.26.8
